"""MLflow lineage: one parent run per pipeline run, one child run per stage, tags that link.

Every stage's child run carries the tags below, so from any model, exported ``.pte`` or
device profile one can walk back to the checkpoint, stage params, data version (DVC
md5s) and code commit that made it (``mobilemoe lineage``). Tag names are the contract
docs/lineage.md documents; change them only together.

Tracking store: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` from params, else a
sqlite file in the project (``.mlflow/mlflow.db``, artifacts in ``.mlflow/artifacts``):
nothing to start. Runs are driven through ``MlflowClient`` with explicit run ids, since
each Metaflow step is its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Optional

from device_lab.schema import redact  # URL userinfo and secret env values -> ***

# --- tag names (documented in docs/lineage.md) ----------------------------------------
TAG_PREFIX = "mobilemoe."
STAGE = "mobilemoe.stage"  # curate | pretrain | midtrain | sft | qat | export | eval | device_profile
PIPELINE_RUN = "mobilemoe.pipeline_run_id"  # the parent run
CHECKPOINT_SHA256 = "mobilemoe.checkpoint_sha256"  # output checkpoint (manifest digest)
INPUT_CHECKPOINT_SHA256 = "mobilemoe.input_checkpoint_sha256"
INPUT_RUN_ID = "mobilemoe.input_run_id"  # the run that made the input checkpoint/artifact
DATA_VERSION = "mobilemoe.data_version"  # JSON {dvc output path: md5} from dvc.lock
DATA_VERSION_SHA256 = "mobilemoe.data_version_sha256"  # one digest of DATA_VERSION
GIT_COMMIT = "mobilemoe.git_commit"
GIT_DIRTY = "mobilemoe.git_dirty"  # "true" when uncommitted changes were present
CODE_VERSION = "mobilemoe.code_version"  # sha256 of the library sources that ran
METAFLOW_PATHSPEC = "mobilemoe.metaflow_pathspec"
MODEL_SOURCE_RUN = "mobilemoe.model_source_run_id"  # model.source: scaling: the run that designed it
PARAMS_SHA256 = "mobilemoe.params_sha256"  # digest of the whole params.yaml in effect
CACHE_KEY = "mobilemoe.cache_key"  # stage cache key (params + inputs + code)
REUSED_FROM_RUN = "mobilemoe.reused_from_run_id"  # set when a cached output was reused
PTE_SHA256 = "mobilemoe.pte_sha256"
MODEL_ID = "mobilemoe.logged_model_id"  # the LoggedModel (e.g. the .pte) a run is about
DEVICE_STATUS = "mobilemoe.device_status"  # device_profile runs: ok | error | rejected
# The environment that ran a stage (mobilemoe/environment.py): a digest of the installed
# distributions + interpreter, and a JSON summary (python, torch, CUDA, ExecuTorch, device).
ENV_SHA256 = "mobilemoe.env_sha256"
ENV = "mobilemoe.env"
REUSED_ENV_SHA256 = "mobilemoe.reused_env_sha256"  # reused stages: the environment that made the output
REUSED_ENV = "mobilemoe.reused_env"
# Owner and liveness of every run (mobilemoe/liveness.py closes the runs of dead flows).
from .liveness import HEARTBEAT, HOST, KILLED_REASON, PID  # noqa: E402, F401 (in ALL_TAGS)

ALL_TAGS = [
    v
    for k, v in dict(globals()).items()
    if isinstance(v, str) and v.startswith(TAG_PREFIX) and k.isupper() and k != "TAG_PREFIX"
]


def project_root() -> Path:
    from .config import project_root as root

    return root()


def tracking_uri(params=None, root: Optional[Path] = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params is not None and params.tracking.uri:
        return params.tracking.uri
    root = root or project_root()
    (root / ".mlflow").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"


def _redact(uri: str) -> str:
    """Never show credentials embedded in a URI."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


class Tracker:
    """Thin wrapper over ``MlflowClient`` for the pipeline's runs."""

    def __init__(self, params=None, root: Optional[Path] = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        self.root = Path(root) if root else project_root()
        self.uri = tracking_uri(params, self.root)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = params.tracking.experiment if params is not None else "mobilemoe"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):
                location = (self.root / ".mlflow" / "artifacts").as_uri()
            try:
                self.experiment_id = self.client.create_experiment(name, artifact_location=location)
            except Exception:  # created concurrently by a sibling step
                existing = self.client.get_experiment_by_name(name)
                if existing is None:
                    raise
                self.experiment_id = existing.experiment_id
        else:
            self.experiment_id = exp.experiment_id

    def __repr__(self) -> str:
        return f"Tracker({_redact(self.uri)}, experiment={self.experiment_id})"

    # -- runs --------------------------------------------------------------------------
    def start_run(self, name: str, tags: dict[str, str], parent_run_id: Optional[str] = None) -> str:
        from . import liveness

        liveness.reap_once(self.client, self.uri, self.experiment_id)
        tags = {k: redact(v) for k, v in tags.items() if v is not None}
        tags.update(liveness.owner_tags())
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
            tags.setdefault(PIPELINE_RUN, parent_run_id)
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        liveness.opened(self.client, self.uri, run.info.run_id, parent_run_id)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        from . import liveness

        liveness.closed(self.uri, run_id)
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(run_id, k, redact(v))

    def log_params(self, run_id: str, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(
        self,
        run_id: str,
        metrics: dict[str, float],
        step: Optional[int] = None,
        model_id: Optional[str] = None,
    ) -> None:
        for k, v in metrics.items():
            if v is None:
                continue
            self.client.log_metric(run_id, k, float(v), step=step or 0, model_id=model_id)

    def log_history(self, run_id: str, history: Iterable[dict[str, Any]], step_key: str = "step") -> None:
        """Log a list of metric dicts (each with a step) as metric curves, in batches."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for row in history:
            step = int(row.get(step_key, 0))
            for k, v in row.items():
                if k == step_key or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                batch.append(Metric(k, float(v), now, step))
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def log_artifacts(
        self, run_id: str, path: str | os.PathLike, artifact_path: Optional[str] = None
    ) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    # -- lookups -------------------------------------------------------------------------
    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def find_runs(self, tags: dict[str, str], max_results: int = 50):
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=query,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )


def _param_value(v: Any) -> str:
    s = redact(json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return s if len(s) <= 6000 else s[:5990] + "..."


# --- code and data identity -----------------------------------------------------------
LAUNCH_FILE = "launch.json"  # the launch record in Metaflow's code package (flows/flow_compute.py)


def git_info(root: Optional[Path] = None) -> dict[str, str]:
    """The commit (and whether the tree was dirty) of ``root``; where there is no git
    checkout (a remote step's code package), the launch record made when the run started."""
    root = root or project_root()
    if not (root / ".git").exists() and (root / LAUNCH_FILE).is_file():
        try:
            record = json.loads((root / LAUNCH_FILE).read_text())
            return {GIT_COMMIT: str(record[GIT_COMMIT]), GIT_DIRTY: str(record[GIT_DIRTY])}
        except (OSError, ValueError, KeyError):
            pass
    return _git(root)


def launch_record(root: Path) -> dict[str, str]:
    """What the launching machine knows and remote steps cannot find out: the git commit."""
    return _git(root)


def _git(root: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {GIT_COMMIT: "unknown", GIT_DIRTY: "unknown"}
    return {GIT_COMMIT: commit or "unknown", GIT_DIRTY: "true" if dirty else "false"}


FIRST_PARTY = ("mobilemoe", "device_lab")  # the packages whose sources a code version covers


def code_version(root: Optional[Path] = None, modules: Optional[Iterable[str]] = None) -> str:
    """sha256 over the library's Python sources (what actually ran, committed or not).

    With ``modules`` (dotted names), only their import closure (:func:`import_closure`)
    counts: the code a stage runs, so editing the evaluation code leaves a pretraining
    stage's version (and cache key) as it was. Without, every source of the packages.
    """
    import hashlib

    root = root or project_root()
    if modules is None:
        files = [p for pkg in FIRST_PARTY for p in (root / pkg).rglob("*.py")]
    else:
        files = list(import_closure(modules, root).values())
    h = hashlib.sha256()
    for p in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def import_closure(modules: Iterable[str], root: Optional[Path] = None) -> dict[str, Path]:
    """The first-party modules that importing ``modules`` can run, by name -> source file.

    Follows every ``import`` statement found with :mod:`ast`, including those inside
    functions (the code imports heavy modules lazily), and the ``__init__`` of every
    package on the way. Imports of other packages are not followed; names built at run
    time (``importlib.import_module(f"...")``) are not seen.
    """
    import ast

    root = root or project_root()
    found: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in FIRST_PARTY:
            continue
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in found:
                continue
            path = module_file(name, root)
            if path is None:  # ``from pkg import name``: an attribute, not a module
                break
            found[name] = path
            tree = ast.parse(path.read_bytes(), str(path))
            todo.extend(imported_names(tree, name, path.name == "__init__.py"))
    return found


def module_file(name: str, root: Path) -> Optional[Path]:
    """The source file of the dotted module ``name`` under ``root``, if there is one."""
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def imported_names(tree, module: str, is_package: bool) -> list[str]:
    """Dotted names a module's ``import`` statements may load (relative ones resolved);
    ``from m import x`` gives ``m`` and ``m.x`` (``x`` may be a submodule)."""
    import ast

    package = module if is_package else module.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append(target)
            out += [f"{target}.{a.name}" for a in node.names if a.name != "*"]
    return out


def data_version_tags(version: dict[str, str]) -> dict[str, str]:
    import hashlib

    text = json.dumps(version, sort_keys=True)
    return {
        DATA_VERSION: text if len(text) < 4900 else text[:4890] + "...",
        DATA_VERSION_SHA256: hashlib.sha256(text.encode()).hexdigest(),
    }

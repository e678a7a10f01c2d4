"""The stage cache: keys, folders, and finding a stage's earlier output again.

Every stage output is cached in the artifact store under a key of (the settings that
decide it, its inputs' hashes, the version of the code it runs):

    artifacts/stages/<stage>/<key16>/
        work/         the trainer's output folder (checkpoints/step_*, resumable)
        output/       the stage's final output (a checkpoint folder with manifest)
        history.json  training stages: loss curves for the card
        stage.json    written last: the StageRef (key, inputs, summary, MLflow run id)

A training stage's key reuses the trainer's own weight settings
(:func:`mobilemoe.train.fingerprint.weight_settings`): an edit the trainer can resume
across (logging, validation or checkpoint cadence, parallelism) keeps the key, so the
stage is reused. The code part of a key is the digest of the stage's import closure
(:data:`STAGE_CODE`), so editing the evaluation code never invalidates a pretraining run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import TRAIN_STAGES, Params
from ..errors import UserError
from ..io import write_json_atomic
from .refs import R, StageRef, TrainRef

_TRAINING = ("mobilemoe.train", "mobilemoe.train.launch", "mobilemoe.checkpoint", "mobilemoe.data.paths")
_EXPORT = ("mobilemoe.export", "mobilemoe.checkpoint")
_PROFILE = (
    "mobilemoe.device_profile",
    "device_lab.runner",
    "device_lab.backends.executorch_bench",
)  # the lab runs its benchmark by module name
# The modules whose work each stage runs (the pipeline's own orchestration is not part of
# it); a stage's code version is the digest of their import closure.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "curate": ("mobilemoe.data", "mobilemoe.data.stages"),
    **{stage: _TRAINING for stage in TRAIN_STAGES},
    "dense_baseline": (*_TRAINING, "mobilemoe.train.dense", "mobilemoe.model.accounting"),
    "export": _EXPORT,
    "eval": ("mobilemoe.eval",),
    "device_profile": _PROFILE,
    "dense_profile": (*_EXPORT, *_PROFILE),
}


def stage_code_versions(root: Path) -> dict[str, str]:
    """Each stage's code version (see :data:`STAGE_CODE`)."""
    from ..lineage import code_version

    return {stage: code_version(root, modules) for stage, modules in STAGE_CODE.items()}


def digest(obj: Any) -> str:
    """sha256 of an object's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(
    stage: str, params: Params, upstream_sha: Optional[str], data_version: dict, code_version: str
) -> str:
    """A training stage's key: the trainer's weight settings, input checkpoint, data, code."""
    from ..train.fingerprint import weight_settings

    return digest(
        {
            "weights": weight_settings(params, stage),
            "upstream": upstream_sha,
            "data": data_version,
            "code": code_version,
        }
    )


def artifact_key(stage: str, section: Any, inputs: dict, code_version: str, **extra: Any) -> str:
    """The key of a stage after training: its params section, input hashes, code."""
    return digest({"stage": stage, "section": section, "upstream": inputs, "code": code_version, **extra})


def artifact_store(root: str | Path, params: Params) -> Path:
    """The stage cache's folder: a local one, or this machine's mirror of an ``s3://``
    store (:mod:`mobilemoe.pipeline.stores`)."""
    store = params.tracking.artifact_store
    if store.startswith("s3://"):
        from .stores import scratch_root

        return scratch_root(Path(root), store)
    if "://" in store:
        raise UserError(
            f"tracking.artifact_store={store!r}: the stage cache is a local folder (relative "
            "to the project) or s3://bucket/prefix"
        )
    path = Path(store)
    return path if path.is_absolute() else Path(root) / path


def stage_folder(root: str | Path, params: Params, stage: str, key: str) -> Path:
    return artifact_store(root, params) / "stages" / stage / key[:16]


def load_cached(folder: Path, key: str, ref_type: type[R], check: Callable[[R], bool]) -> Optional[R]:
    """The stage's cached reference if it matches ``key`` and its files are intact
    (``check``, e.g. :func:`checkpoint_intact`)."""
    from ..checkpoint import CheckpointError
    from .stores import pull, remote_of

    path = folder / "stage.json"
    remote = remote_of(folder)
    if remote and not _has_key(path, key):  # an s3:// store: fetch the entry if it has one
        pull(folder, remote)
    if not path.is_file():
        return None
    try:
        ref = ref_type.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None  # not JSON, or written by a version with other fields
    if ref.key != key:
        return None
    ref = rebased(ref, folder)
    try:
        return ref if check(ref) else None
    except (CheckpointError, KeyError, OSError, ValueError):
        return None  # damaged cache entry: redo the stage


def checkpoint_intact(ref: TrainRef) -> bool:
    """The cached checkpoint is the one recorded (its manifest digest matches)."""
    from ..checkpoint import checkpoint_sha256

    return checkpoint_sha256(ref.checkpoint) == ref.checkpoint_sha256


def save_cached(folder: Path, ref: StageRef) -> None:
    """Record a finished stage (last, so a half-done stage is never found), with the
    environment that made it and the folder its paths point into."""
    from ..environment import environment
    from .stores import push, remote_of

    ref = dataclasses.replace(ref, environment=ref.environment or environment(), folder=str(folder))
    write_json_atomic(folder / "stage.json", ref.to_json())
    remote = remote_of(folder)
    if remote:
        push(folder, remote)


def _has_key(path: Path, key: str) -> bool:
    try:
        return json.loads(path.read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def materialize(root: str | Path, params: Params, ref: Optional[R]) -> Optional[R]:
    """``ref`` with its files on this machine: unchanged for a local store; for an s3://
    store, its entry pulled into this machine's mirror if missing (a step on another
    machine than the one that made it) and its paths pointing there."""
    if ref is None or not ref.folder or not params.tracking.artifact_store.startswith("s3://"):
        return ref
    folder = stage_folder(root, params, ref.stage, ref.key)
    if not _has_key(folder / "stage.json", ref.key):
        from .stores import pull, remote_of

        remote = remote_of(folder)
        if remote is None or not pull(folder, remote):
            raise UserError(
                f"{ref.stage}: its output {ref.key[:16]} is not in tracking.artifact_store="
                f"{params.tracking.artifact_store}; rerun the flow to make it again"
            )
    return rebased(ref, folder)


def rebased(ref: R, folder: Path) -> R:
    """``ref`` with the paths inside its recorded folder moved to ``folder`` (where the
    entry is now: another clone's copy of the store, a moved project)."""
    old, new = ref.folder, str(folder)
    if not old or old == new:
        return ref

    def move(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return new + value[len(old) :]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    changes = {f.name: move(getattr(ref, f.name)) for f in dataclasses.fields(ref) if f.name != "folder"}
    return dataclasses.replace(ref, **changes, folder=new)

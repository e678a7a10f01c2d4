"""The smoke flow run that ``tests/pipeline/test_flow.py`` checks, started as soon as the
session has collected that module's tests and left running beside the others.

The run is single-threaded and mostly waits on step start-ups, so on two cores it costs the
rest of the session little, and the flow tests find it finished instead of waiting ~4
minutes for it. It is a real Runner API run: a child Python process calls
``metaflow.Runner(...).run()`` in the throwaway project (this process's cwd, environment and
Metaflow client state are untouched) and writes the status, the run's pathspec and its
output to a JSON file that ``first_run`` reads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
SECRET = "mobilemoe-test-secret-7f3a9c"  # planted in the environment; must never be recorded
# What the flow sees: ours, and nothing of the developer's MLflow / Metaflow settings.
DROP = ("MLFLOW_TRACKING_URI", "METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_CARD_LOCALROOT")
TIMEOUT_S = 1500

_RUNNER = """
import json, os, sys
from metaflow import Runner
root, out = sys.argv[1], sys.argv[2]
flow = os.path.join(root, "flows", "full_repro.py")
with Runner(flow, show_output=False, env=dict(os.environ), cwd=root).run() as r:
    result = {"status": r.status, "pathspec": r.run.pathspec, "stdout": r.stdout, "stderr": r.stderr}
with open(out + ".tmp", "w") as f:
    json.dump(result, f)
os.replace(out + ".tmp", out)
"""

_started: Optional[dict] = None


def project_helpers():
    spec = importlib.util.spec_from_file_location("project_helpers", ROOT / "tests" / "data" / "project.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def flow_env(root: Path) -> dict[str, str]:
    return {"USERNAME": "mobilemoe-test", "MOBILEMOE_ROOT": str(root), "AWS_SECRET_ACCESS_KEY": SECRET}


def make_flow_project(dest: Path) -> Path:
    """A copy of the project on the smoke preset, with the flow and device lab, committed."""
    helpers = project_helpers()
    root = helpers.make_project(dest, "smoke")
    for name in ("flows", "device_lab"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("/data/\n.venv\n/artifacts/\n/.mlflow/\n/.metaflow/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run(git + ["commit", "-qm", "project"], cwd=root, check=True, capture_output=True)
    return root


def start(dest: Path) -> None:
    """Make the project in ``dest/proj`` and start the run (once per session); its
    result and log go beside the project, in ``dest``."""
    global _started
    if _started is not None:
        return
    root = make_flow_project(dest / "proj")
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    env.update(flow_env(root))
    out = dest / "first_run.json"
    log = open(dest / "runner.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(root), str(out)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _started = {"root": root, "proc": proc, "out": out, "log": dest / "runner.log", "t0": time.monotonic()}


def started_root() -> Optional[Path]:
    return _started["root"] if _started else None


def result() -> dict:
    """Wait for the run; its status, pathspec, stdout and stderr."""
    assert _started is not None
    proc = _started["proc"]
    proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - _started["t0"])))
    if not _started["out"].is_file():
        raise AssertionError(
            f"the background flow run wrote no result (exit {proc.returncode}):\n"
            + _started["log"].read_text(errors="replace")[-4000:]
        )
    return json.loads(_started["out"].read_text())


def stop() -> None:
    """End of session: a run still going (the session was cut short) is killed."""
    if _started is not None and _started["proc"].poll() is None:
        import signal

        os.killpg(_started["proc"].pid, signal.SIGKILL)
        _started["proc"].wait()

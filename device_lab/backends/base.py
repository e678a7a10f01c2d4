"""The backend contract (``Backend``, ``RunContext``, ``BackendError``) and the child
process every job runs in (``run_child`` / ``child_main``), apart from the registry in
``device_lab.backends`` so that backends import this module, never their package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_ENV_ALLOW = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
    # which MoE kernel library / SIMD path the program's mmoe:: operators use
    "MOBILEMOE_KERNELS_LIBRARY",
    "MOBILEMOE_KERNELS_ISA",
)


class BackendError(RuntimeError):
    """The job failed on the device; the message becomes the result's ``reason``."""


@dataclass
class RunContext:
    job: dict  # the validated job document
    program: Path  # verified local copy of the artifact
    tokenizer: Path  # verified local copy of the tokenizer
    workdir: Path  # this job's folder inside the runner's work folder
    timeout_s: float  # wall time left for this job (deadline and runner limit)
    cancel: threading.Event  # set when the lease is lost or the runner stops


class Backend:
    name = ""

    def describe(self) -> dict[str, Any]:
        """Scalars describing the device (cpu model, cores, memory, runtime version)."""
        raise NotImplementedError

    def run(self, ctx: RunContext) -> dict[str, Any]:
        """Run the job's benchmark; returns the measurement fields of the result
        (load_s, prefill_tok_per_s, decode_tok_per_s, ..., raw). Raises BackendError."""
        raise NotImplementedError


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
    root = _package_root()  # the child must import device_lab however the runner was started
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_child(module: str, spec: dict, ctx: RunContext, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m module --spec spec.json --out out.json`` in ``ctx.workdir`` (argv list,
    never a shell), with a timeout and cancellation; returns the child's output document."""
    spec_path, out_path, log_path = (ctx.workdir / n for n in ("spec.json", "out.json", "bench.log"))
    out_path.unlink(missing_ok=True)
    spec = dict(spec, parent_pid=os.getpid())
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", module, "--spec", str(spec_path), "--out", str(out_path)]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ctx.workdir,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        why = None
        try:
            while proc.poll() is None:
                if ctx.cancel.is_set():
                    why = "cancelled (lease lost or runner stopping)"
                elif time.monotonic() - started > ctx.timeout_s:
                    why = f"timed out after {ctx.timeout_s:.0f} s"
                if why:
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:  # kill the whole group: the benchmark and anything it spawned
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
    if why:
        raise BackendError(f"benchmark {why}")
    try:
        out = json.loads(out_path.read_text())
    except (OSError, ValueError):
        out = None
    if not isinstance(out, dict):
        code = proc.returncode
        how = (
            f"crashed ({signal.Signals(-code).name})"
            if code < 0 and -code in signal.valid_signals()
            else f"exited with code {code}"
        )
        raise BackendError(f"benchmark process {how} without a result (its log: bench.log)")
    if out.get("error"):
        raise BackendError(str(out["error"]))
    return out


def child_main(run: Callable[[dict], dict]) -> None:
    """Entry point of a benchmark child: read the spec, run, write the output atomically."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    _die_with_parent(spec.get("parent_pid"))
    try:
        out = run(spec)
        code = 0
    except BackendError as e:
        out, code = {"error": str(e)}, 1
    except Exception as e:  # report, never a silent crash: the runner keeps going
        out, code = {"error": f"{type(e).__name__}: {e}"}, 1
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, args.out)
    sys.stdout.flush()
    sys.exit(code)


def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak RSS. On Linux VmHWM, not getrusage: ru_maxrss survives exec, so
    a child would report its parent's (the runner's) size at fork time."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_now_bytes() -> int:
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else peak_rss_bytes()


def _die_with_parent(parent_pid: Any) -> None:
    """Linux: get SIGKILL when the runner dies, so a killed runner leaves no orphan."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if isinstance(parent_pid, int) and os.getppid() != parent_pid:
        os._exit(3)  # the runner died before prctl took effect

"""Summary files of the benchmarks: the result plus the machine and the date it was measured
(and the one timing helper the kernel benchmarks share).

Every benchmark script writes ``benchmarks/results/<name>.json`` through ``write_result``,
so ``benchmarks/report.py`` can render docs/benchmarks.md from files instead of figures
typed by hand, and a reader can tell on which machine and when a figure was measured.
Speed figures mean little without both. Imported by the scripts as ``from stamp import
...`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What the figures depend on: CPU, cores, library versions, load (torch imported lazily)."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "executorch": _version("executorch"),
        "gpu": None,
        # other work on the machine when the result was written (figures under load are noisy)
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def time_per_call(fn, calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls (wall clock)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_result(name: str, result: dict, path: str | Path | None = None) -> Path:
    """Write ``result`` with ``machine`` and ``date`` to ``path`` (default results/<name>.json)."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, **result, "machine": machine_info(), "date": utc_now()}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)
    return out

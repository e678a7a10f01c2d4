"""Device backends: what actually runs a program. One small class per kind of device.

A backend has a ``name`` (what jobs ask for), ``describe()`` (the device, for results)
and ``run(ctx) -> measurement``. Every job runs in its own child process, so the peak
memory a backend reports is the program's, and a crash or hang only costs that job:

    class PhoneBackend(Backend):          # e.g. adb push + an on-device runner binary
        name = "android-adb"
        def describe(self): ...
        def run(self, ctx): return run_child("my_lab.phone_bench", {...}, ctx)

Shipped: ``local-cpu`` (the ExecuTorch runtime on this machine's CPU) and
``artifact-check`` (verifies a program arrived intact; no runtime needed).
The child never sees the runner's environment (no credentials): only an allow-list.
The contract and the child process live in ``device_lab.backends.base``; this module is
the registry of shipped backends.
"""

from __future__ import annotations

from typing import Callable

from .base import (
    Backend,
    BackendError,
    RunContext,
    child_env,
    child_main,
    peak_rss_bytes,
    rss_now_bytes,
    run_child,
)

__all__ = [
    "Backend",
    "BackendError",
    "RunContext",
    "child_env",
    "child_main",
    "make_backend",
    "peak_rss_bytes",
    "registry",
    "rss_now_bytes",
    "run_child",
]


def registry() -> dict[str, Callable[[], Backend]]:
    from .artifact_check import ArtifactCheckBackend
    from .local_cpu import LocalCpuBackend

    return {b.name: b for b in (LocalCpuBackend, ArtifactCheckBackend)}


def make_backend(name: str) -> Backend:
    known = registry()
    if name not in known:
        raise KeyError(f"unknown backend {name!r}; this runner offers: {', '.join(sorted(known))}")
    return known[name]()

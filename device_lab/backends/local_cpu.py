"""Backend ``local-cpu``: the ExecuTorch runtime on this machine's own CPU.

The runner's embedded default. Each job runs ``executorch_bench`` in a child process
(ExecuTorch's own LLM runner, ``TextLLMRunner``, with the job's thread count), so the
peak memory reported is that process's, never the runner's.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from .base import Backend, RunContext, run_child


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class LocalCpuBackend(Backend):
    name = "local-cpu"

    def describe(self) -> dict:
        cpus, mem = os.cpu_count(), _memory_bytes()
        model = _cpu_model()
        mem_txt = f", {mem / 2**30:.1f} GiB" if mem else ""
        return {
            "kind": "cpu",
            "description": f"{model} ({cpus} logical CPUs{mem_txt}), "
            f"{platform.system()} {platform.release()}, {platform.machine()}",
            "cpu_model": model,
            "logical_cpus": cpus,
            "memory_bytes": mem,
            "os": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(),
            "runtime": "executorch",
            "runtime_version": _version("executorch"),
            "python": platform.python_version(),
        }

    def run(self, ctx: RunContext) -> dict:
        bench = ctx.job["benchmark"]
        spec = {"program": str(ctx.program), "tokenizer": str(ctx.tokenizer), **bench}
        # One intra-op thread count for every library the child loads (docs/libraries.md#threads).
        threads = str(bench["threads"])
        return run_child(
            "device_lab.backends.executorch_bench",
            spec,
            ctx,
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"},
        )

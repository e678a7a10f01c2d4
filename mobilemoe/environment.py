"""The environment a stage ran in: what two teammates' runs may differ by besides params,
data and code.

    from mobilemoe.environment import environment, environment_tags
    env = environment()          # {"sha256", "python", "platform", "torch", "cuda", ...}
    environment_tags(env)        # the MLflow tags of a stage run (docs/lineage.md)

``sha256`` digests every installed distribution and its version (``name==version``, sorted:
what ``pip freeze`` would list), plus the interpreter and platform. It is recorded, not
part of the stage keys: a teammate whose environment differs by a patch release still
reuses the cache, and the reused run says which environment made the output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import sys
from typing import Any, Optional

from .lineage import ENV, ENV_SHA256, REUSED_ENV, REUSED_ENV_SHA256


def distributions() -> list[str]:
    """``name==version`` of every installed distribution, sorted (names normalized)."""
    from importlib import metadata

    seen = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip().lower().replace("_", "-")
        if name:
            seen.add(f"{name}=={dist.version}")
    return sorted(seen)


def _version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device(requested: str) -> dict[str, Any]:
    """What the stage computes on: ``runtime.device`` resolved as the trainer resolves it."""
    try:
        import torch
    except ImportError:
        return {"device": "cpu", "device_name": _cpu_model()}
    cuda = torch.cuda.is_available() and requested != "cpu"
    if cuda:
        return {
            "device": "cuda",
            "device_name": torch.cuda.get_device_name(0),
            "device_count": torch.cuda.device_count(),
        }
    return {"device": "cpu", "device_name": _cpu_model()}


@functools.lru_cache(maxsize=4)
def environment(device: str = "auto") -> dict[str, Any]:
    """This process's environment (computed once per process and device setting)."""
    dists = distributions()
    basics = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    digest = hashlib.sha256(json.dumps({**basics, "distributions": dists}).encode()).hexdigest()
    torch_cuda = None
    try:
        import torch

        torch_cuda = torch.version.cuda
    except ImportError:
        pass
    return {
        "sha256": digest,
        **basics,
        "torch": _version("torch"),
        "cuda": torch_cuda,
        "executorch": _version("executorch"),
        "torchao": _version("torchao"),
        "mlflow": _version("mlflow"),
        "metaflow": _version("metaflow"),
        "dvc": _version("dvc"),
        **_device(device),
        "n_distributions": len(dists),
    }


def environment_tags(env: dict[str, Any], reused: bool = False) -> dict[str, str]:
    """The tags that record ``env``; ``reused``: as the environment that made a cached output."""
    if not env:
        return {}
    sha, text = (REUSED_ENV_SHA256, REUSED_ENV) if reused else (ENV_SHA256, ENV)
    return {sha: str(env.get("sha256")), text: json.dumps(env, sort_keys=True)}


def describe(env: dict[str, Any]) -> str:
    """One line: ``python 3.11.7, torch 2.13.0 (cpu), executorch 1.5.1 on cpu: <model> [abcd1234]``."""
    if not env:
        return "unknown environment (made before environments were recorded)"
    cuda = f"cuda {env['cuda']}" if env.get("cuda") else "cpu"
    return (
        f"python {env.get('python')}, torch {env.get('torch')} ({cuda}), executorch {env.get('executorch')} "
        f"on {env.get('device')}: {env.get('device_name')} [{str(env.get('sha256'))[:12]}]"
    )

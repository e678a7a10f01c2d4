"""The ``compute`` section: where each step of the flow runs and what it asks for.

Each work step of ``flows/full_repro.py`` has an entry; ``target: local`` (the default)
runs it in a process of the machine that runs the flow, as always. ``kubernetes`` or
``batch`` sends that one step to Metaflow's compute layer with ``@resources(cpu, memory,
gpu)`` (``start``, the joins and ``end`` stay where the flow was launched: they only do
bookkeeping). A training stage's processes per step are its own ``<stage>.nproc``.
Remote steps need stores every machine can reach: docs/scale-out.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .base import NonNegativeInt, PositiveInt, require

STEPS = (
    "curate",
    "scaling",
    "pretrain",
    "midtrain",
    "sft",
    "qat",
    "export",
    "eval",
    "device_profile",
    "dense_baseline",
)


@dataclass
class StepCompute:
    target: Literal["local", "kubernetes", "batch"] = "local"
    cpu: PositiveInt = 2  # CPU cores (@resources; local steps ignore it)
    memory_mb: PositiveInt = 8192  # MiB (@resources; local steps ignore it)
    gpu: NonNegativeInt = 0  # GPUs (@resources); a training step wants <stage>.nproc of them


@dataclass
class ComputeConfig:
    # The container image of remote steps (null = Metaflow's METAFLOW_KUBERNETES_CONTAINER_IMAGE
    # / METAFLOW_BATCH_CONTAINER_IMAGE); the project's Dockerfile builds one.
    image: Optional[str] = None
    curate: StepCompute = field(default_factory=StepCompute)
    scaling: StepCompute = field(default_factory=StepCompute)
    pretrain: StepCompute = field(default_factory=StepCompute)
    midtrain: StepCompute = field(default_factory=StepCompute)
    sft: StepCompute = field(default_factory=StepCompute)
    qat: StepCompute = field(default_factory=StepCompute)
    export: StepCompute = field(default_factory=StepCompute)
    eval: StepCompute = field(default_factory=StepCompute)
    device_profile: StepCompute = field(default_factory=StepCompute)
    dense_baseline: StepCompute = field(default_factory=StepCompute)

    def validate(self, key: str) -> None:
        if self.image is not None:
            require(
                "@" not in self.image.split("/", 1)[0],
                f"{key}.image",
                "must not carry credentials; log the cluster in to the registry instead",
            )

    def remote_steps(self) -> list[str]:
        return [s for s in STEPS if getattr(self, s).target != "local"]


def step_decorators(compute: ComputeConfig, step: str) -> list[tuple[str, dict]]:
    """The Metaflow step decorators (name, kwargs) that send ``step`` where params say;
    none for a local step (and for steps without an entry: start, joins, end)."""
    if step not in STEPS:
        return []
    cfg: StepCompute = getattr(compute, step)
    if cfg.target == "local":
        return []
    target: dict = {"image": compute.image} if compute.image else {}
    return [("resources", {"cpu": cfg.cpu, "memory": cfg.memory_mb, "gpu": cfg.gpu}), (cfg.target, target)]

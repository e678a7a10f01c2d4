"""The ``scaling`` section: the phone's budgets, and the sweep that fits the scaling law.

The paper's claim 1 (docs/paper.md#budgets-and-scaling-law): the memory budget is the INT4
weight bytes of ALL parameters (phones have < 3 GB for it); the compute budget is forward
FLOPs per token of the ACTIVE parameters. ``mobilemoe arch`` reports the configured model
against these budgets; ``mobilemoe design`` picks the architecture the fitted law predicts
best under them.

``scaling.sweep`` is the ladder the flow's ``scaling`` step trains (docs/scaling.md): every
size in ``active_params`` crossed with every architecture in ``architectures``, each a real
pre-training run of the project's trainer on the curated pretraining data. The token
budget, batch size and learning rate of a point follow from its size by the rules below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Optional

from .base import PositiveFloat, PositiveInt, Range, fail, require


@dataclass
class SweepArchitecture:
    """One column of the ladder (docs/scaling.md#the-coordinates)."""

    # expert slots / active slots (1 = a dense model: the other two keys are then ignored)
    sparsity: Annotated[float, Range(ge=1)] = 1.0
    # the reference FFN (4 x d_model) is cut into this many slots; slot width = 4 d / G
    granularity: PositiveInt = 1
    # share of the active slots that form the always-on shared expert
    shared_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.0


@dataclass
class SweepConfig:
    # Targets of ACTIVE NON-EMBEDDING parameters; each is snapped to the nearest valid shape.
    active_params: list[PositiveInt] = field(default_factory=lambda: [30000, 120000, 270000, 480000])
    architectures: list[SweepArchitecture] = field(default_factory=lambda: [SweepArchitecture()])
    # Depth of every point (null: the width/depth rule of mobilemoe.scaling.shapes).
    n_layers: Optional[PositiveInt] = 2
    # Token budget = tokens_per_param x active non-embedding params (our choice, see
    # docs/scaling.md#the-rules), at least min_steps steps, at most max_epochs of the data.
    tokens_per_param: PositiveFloat = 2.0
    max_epochs: PositiveFloat = 2.0
    min_steps: PositiveInt = 50
    seq_len: PositiveInt = 128
    # Batch: the largest power of two <= max_batch_size that still gives min_steps steps.
    max_batch_size: PositiveInt = 16
    # Learning rate = lr x (lr_reference_width / d_model) ** lr_width_exponent
    # (1: Adam's LR scales as 1/width, as muP; 0: one LR for every width).
    lr: PositiveFloat = 0.003
    lr_reference_width: PositiveInt = 128
    lr_width_exponent: Annotated[float, Range(ge=0, le=2)] = 1.0
    warmup_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.1
    # Points per foreach task: a task loads the data once and trains its points one after
    # another; on a cluster the tasks run in parallel, here they share the CPU slots.
    points_per_task: PositiveInt = 4
    # torch threads per point; the sweep runs runtime.threads // threads points at once.
    threads: PositiveInt = 1
    # Fewer ok points than this: the fit is recorded as skipped and the pipeline goes on
    # (the law itself needs its free parameters + 3: 10 when S, G and f all vary).
    min_points_to_fit: PositiveInt = 10

    def validate(self, key: str) -> None:
        require(bool(self.active_params), f"{key}.active_params", "must list at least one size")
        require(bool(self.architectures), f"{key}.architectures", "must list at least one architecture")
        seen = set()
        for i, arch in enumerate(self.architectures):
            coords = (arch.sparsity, arch.granularity, arch.shared_fraction) if arch.sparsity > 1 else (1.0,)
            if coords in seen:
                fail(f"{key}.architectures[{i}]", f"repeats an earlier architecture {coords}")
            seen.add(coords)


@dataclass
class ScalingConfig:
    memory_budget_gib: PositiveFloat = 3.0  # INT4 weight bytes allowed, GiB (paper: < 3 GB)
    # Forward GFLOPs per token allowed at `context` (our choice: MobileMoE-L's ~2 GFLOP
    # at 2k context rounded up, so the whole published family fits).
    compute_budget_gflops_per_token: PositiveFloat = 2.5
    context: PositiveInt = 2048  # context length the FLOPs are counted at (our choice: phone chat)
    sweep: Optional[SweepConfig] = None  # null: no sweep (the flow's scaling step records so)

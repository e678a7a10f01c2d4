"""The ``scaling`` section: the phone's budgets that the architecture must fit.

The paper's claim 1 (docs/paper.md#budgets-and-scaling-law): the memory budget is the INT4
weight bytes of ALL parameters (phones have < 3 GB for it); the compute budget is forward
FLOPs per token of the ACTIVE parameters. ``mobilemoe arch`` reports the configured model
against these budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import PositiveFloat, PositiveInt


@dataclass
class ScalingConfig:
    memory_budget_gib: PositiveFloat = 3.0  # INT4 weight bytes allowed, GiB (paper: < 3 GB)
    # Forward GFLOPs per token allowed at `context` (our choice: MobileMoE-L's ~2 GFLOP
    # at 2k context rounded up, so the whole published family fits).
    compute_budget_gflops_per_token: PositiveFloat = 2.5
    context: PositiveInt = 2048  # context length the FLOPs are counted at (our choice: phone chat)

"""The ``scaling`` section: the phone's budgets that the architecture must fit.

PAPER.md claim 1: the memory budget is the INT4 weight bytes of ALL parameters (phones
have < 3 GB for it); the compute budget is forward FLOPs per token of the ACTIVE
parameters. ``mobilemoe arch`` reports the configured model against these budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import positive


@dataclass
class ScalingConfig:
    memory_budget_gib: float = 3.0  # INT4 weight bytes allowed, GiB (PAPER.md: < 3 GB)
    # Forward GFLOPs per token allowed at `context` (our choice: MobileMoE-L's ~2 GFLOP
    # at 2k context rounded up, so the whole published family fits).
    compute_budget_gflops_per_token: float = 2.5
    context: int = 2048  # context length the FLOPs are counted at (our choice: phone chat)

    def validate(self, key: str) -> None:
        positive(self, key, "memory_budget_gib", "compute_budget_gflops_per_token", "context")

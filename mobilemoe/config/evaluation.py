"""The ``eval`` section: lm-eval benchmarks on checkpoints and on the exported program."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .base import positive


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "piqa"])
    limit: Optional[int] = 200  # examples per task; null = full splits
    num_fewshot: int = 0
    batch_size: int = 16
    source: Literal["offline", "hub"] = "offline"  # hub = lm-eval's official tasks (network)

    def validate(self, key: str) -> None:
        positive(self, key, "limit", "batch_size")

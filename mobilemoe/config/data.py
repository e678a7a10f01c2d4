"""The ``data`` section: sources, cleaning, tokenizer and packed shards (DVC stages).

(Initial shape; the curation code owns and extends it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import require


@dataclass
class DataConfig:
    out_dir: str = "data"  # DVC stage outputs, relative to the project
    sources: list[dict[str, Any]] = field(default_factory=list)
    val_fraction: float = 0.05

    def validate(self, key: str) -> None:
        require(0 < self.val_fraction < 0.5, f"{key}.val_fraction", "must be in (0, 0.5)")

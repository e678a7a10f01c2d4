"""The ``export`` section: the ExecuTorch program."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .base import positive


@dataclass
class ExportConfig:
    quantize: Literal["8da4w", "none"] = "8da4w"  # 8da4w = as trained in QAT; none = fp32
    max_seq_len: Optional[int] = None  # KV-cache length; null = model.max_seq_len

    def validate(self, key: str) -> None:
        positive(self, key, "max_seq_len")

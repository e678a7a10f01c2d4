"""The ``export`` section: the ExecuTorch program (``mobilemoe.export.export_pte``).

export_pte(qat_checkpoint, out, quantize=params.export.quantize,
           max_seq_len=params.export.max_seq_len)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .base import PositiveInt


@dataclass
class ExportConfig:
    # 8da4w = INT4 g32 weights + INT8 dynamic activations, as trained in QAT (needs the qat
    # stage's checkpoint); none = fp32 program
    quantize: Literal["8da4w", "none"] = "8da4w"
    # KV-cache slots of the program (prompt + generated tokens); null = model.max_seq_len
    max_seq_len: Optional[PositiveInt] = None

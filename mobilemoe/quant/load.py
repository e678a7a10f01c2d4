"""Load any checkpoint for inference: the converted INT4 model for a QAT checkpoint.

    model, cfg = load_for_inference("runs/qat/final")            # QAT -> converted 8da4w
    model, cfg = load_for_inference("runs/sft/final")            # fp32, as trained
    model, cfg = load_for_inference("runs/qat/final", quantized=False)   # its float weights

A QAT checkpoint stores float weights and ``"qat": {"scheme", "group_size",
"quantize_embedding"}`` in config.json (written by the trainer's qat stage);
prepare + convert are re-applied here, deterministically, so evaluation and export see
the model the exported program computes.
"""

from __future__ import annotations

import os
from typing import Optional

from ..checkpoint import CONFIG, CheckpointError, load_checkpoint
from .qat import QATSpec, QuantizationError, convert_qat, qat_spec


def checkpoint_qat_spec(config: dict, source: str = "checkpoint") -> Optional[QATSpec]:
    """The QAT format recorded in a checkpoint's config.json, or None for a float model."""
    meta = config.get("qat")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}/{CONFIG}: 'qat' must be a mapping or null, got {meta!r}")
    try:
        return qat_spec(meta, where=f"{source}/{CONFIG}: qat")
    except QuantizationError as e:
        raise CheckpointError(str(e)) from None


def load_for_inference(checkpoint_dir: str | os.PathLike, quantized: bool = True, device: str = "cpu"):
    """``(model, config_dict)`` in eval mode.

    QAT checkpoint and ``quantized``: the converted model (packed INT4 experts, INT8 activations).
    Otherwise the float model as trained (routed experts; fp32).
    """
    model, config = load_checkpoint(checkpoint_dir, device=device)
    spec = checkpoint_qat_spec(config, str(checkpoint_dir))
    if quantized and spec is not None:
        model = convert_qat(model, spec)
    return model.eval(), config

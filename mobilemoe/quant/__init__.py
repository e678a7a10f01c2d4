"""Quantization: QAT fake quantization for "8da4w" and its conversion for export.

    from mobilemoe.quant import prepare_qat, convert_qat, load_for_inference
    model = prepare_qat(model, params.qat)          # the trainer's qat stage
    model = convert_qat(model, params.qat)          # eager model the .pte computes
    model, cfg = load_for_inference(checkpoint)     # any checkpoint; QAT -> converted

See :mod:`mobilemoe.quant.qat` for the format and :mod:`mobilemoe.quant.experts` for the
routed experts' fake quantization.
"""

from .load import checkpoint_qat_spec, load_for_inference
from .qat import (
    QATSpec,
    QuantizationError,
    convert_qat,
    embedding_config,
    is_qat_prepared,
    linear_config,
    prepare_qat,
    qat_spec,
)

__all__ = [
    "prepare_qat",
    "convert_qat",
    "load_for_inference",
    "checkpoint_qat_spec",
    "is_qat_prepared",
    "QATSpec",
    "qat_spec",
    "QuantizationError",
    "linear_config",
    "embedding_config",
]

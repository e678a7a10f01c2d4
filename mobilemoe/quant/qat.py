"""Quantization-aware training for the deployment format "8da4w", and its conversion.

    model = prepare_qat(model, params.qat)     # fake quantization; train as usual
    ...                                        # float weights move, forward sees INT4/INT8
    model = convert_qat(model, params.qat)     # packed INT4 experts + torchao-quantized linears

The format (docs/paper.md#qat-and-int4-format): symmetric INT4 weights in [-8, 7] with one scale per
group of 32 along the input dim, INT8 dynamic per-token asymmetric activations (the
XNNPACK CPU scheme of the MobileLLM family); the embedding INT4 g32 weight-only; router,
norms and ``expert_bias`` stay float (the router is an ``F.linear`` on a parameter, not an
``nn.Linear``, so no pass touches it).

* ``nn.Linear`` / ``nn.Embedding``: torchao's QAT API, ``QATConfig(base, step="prepare")``
  then ``QATConfig(base, step="convert")``, where ``base`` is the post-training config the
  exporter lowers (``Int8DynamicActivationIntxWeightConfig`` / ``IntxWeightOnlyConfig``).
* routed experts (stacked 3-D parameters): the top-k kernel's format, INT4 g32 per expert
  matrix and INT8 per-row activations (:mod:`mobilemoe.quant.experts`); convert packs them
  for the kernel (``QuantizedExperts``).
* tied embeddings: prepare keeps ``output.weight is tok_embeddings.weight`` (one float
  tensor trained). The embedding's groups (along d_model, weight-only) and the LM head's
  groups (along its d_model input) are the same 32 numbers with the same symmetric
  scale, so both uses see the same INT4 values; convert gives each its own quantized copy
  (the program stores both, as ExecuTorch's llama export does).

Nothing here adds parameters or buffers: a QAT model's ``state_dict`` is the float
model's, so checkpoints load as plain models and :func:`convert_qat` can be re-applied
deterministically to any QAT checkpoint (:func:`mobilemoe.quant.load_for_inference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import UserError
from .experts import KERNEL_GROUP, ExpertFakeQuant, QuantizedExperts, kernel_shape_problem

SCHEMES = ("8da4w",)


class QuantizationError(UserError):
    """A model or setting that the deployment format cannot represent."""


@dataclass(frozen=True)
class QATSpec:
    """The format a QAT checkpoint was trained for (config.json ``qat``)."""

    scheme: str = "8da4w"
    group_size: int = 32  # docs/paper.md#qat-and-int4-format: group size 32
    quantize_embedding: bool = True  # docs/paper.md#qat-and-int4-format: embedding also INT4 g32

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "group_size": self.group_size,
            "quantize_embedding": self.quantize_embedding,
        }


def qat_spec(cfg: Any, where: str = "qat") -> QATSpec:
    """A ``QATSpec`` from ``params.qat`` (QATStageConfig), a config.json ``qat`` dict or a spec."""
    if isinstance(cfg, QATSpec):
        spec = cfg
    elif isinstance(cfg, Mapping):
        unknown = sorted(set(cfg) - {"scheme", "group_size", "quantize_embedding"})
        if unknown:
            raise QuantizationError(
                f"{where}.{unknown[0]}: unknown key (known: scheme, group_size, quantize_embedding)"
            )
        spec = QATSpec(**{k: cfg[k] for k in ("scheme", "group_size", "quantize_embedding") if k in cfg})
    else:
        try:
            spec = QATSpec(cfg.scheme, cfg.group_size, cfg.quantize_embedding)
        except AttributeError:
            raise QuantizationError(
                f"{where}: expected the qat section (scheme, group_size, "
                f"quantize_embedding), got {type(cfg).__name__}"
            ) from None
    if spec.scheme not in SCHEMES:
        raise QuantizationError(
            f"{where}.scheme: {spec.scheme!r} is not supported (supported: {', '.join(SCHEMES)})"
        )
    if not isinstance(spec.group_size, int) or isinstance(spec.group_size, bool) or spec.group_size <= 0:
        raise QuantizationError(f"{where}.group_size: must be a positive integer, got {spec.group_size!r}")
    if not isinstance(spec.quantize_embedding, bool):
        raise QuantizationError(
            f"{where}.quantize_embedding: must be true or false, got {spec.quantize_embedding!r}"
        )
    return spec


def linear_config(spec: QATSpec):
    """The post-training config the exporter lowers: INT8 dynamic act + INT4 g32 weights."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup

    int4 = torch.int4  # type: ignore[attr-defined]  # torch's stubs lack the sub-byte dtypes
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=int4, weight_granularity=PerGroup(spec.group_size)
    )


def embedding_config(spec: QATSpec):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    int4 = torch.int4  # type: ignore[attr-defined]  # torch's stubs lack the sub-byte dtypes
    return IntxWeightOnlyConfig(weight_dtype=int4, granularity=PerGroup(spec.group_size))


def _is_linear(m: nn.Module, _fqn: str = "") -> bool:
    return type(m) is nn.Linear


def _is_embedding(m: nn.Module, _fqn: str = "") -> bool:
    return type(m) is nn.Embedding


def check_group_size(model: nn.Module, spec: QATSpec) -> None:
    """Every quantized input width must split into whole groups; name the first that does not."""
    from ..model.moe import RoutedExperts

    g = spec.group_size
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features % g:
            raise QuantizationError(
                f"{name}: input width {m.in_features} is not a multiple of "
                f"qat.group_size={g}; choose a group size that divides it"
            )
        if isinstance(m, nn.Embedding) and spec.quantize_embedding and m.embedding_dim % g:
            raise QuantizationError(
                f"{name}: embedding width {m.embedding_dim} is not a multiple of qat.group_size={g}"
            )
        if isinstance(m, RoutedExperts):
            _, H2, D = m.w13.shape
            if g != KERNEL_GROUP:
                raise QuantizationError(
                    f"{name}: qat.group_size={g}, but the MoE kernel's INT4 "
                    f"experts use groups of {KERNEL_GROUP}; set qat.group_size: "
                    f"{KERNEL_GROUP}"
                )
            if (problem := kernel_shape_problem(D, H2 // 2)) is not None:
                raise QuantizationError(
                    f"{name}: {problem}; choose model.d_model and model.moe.expert_hidden accordingly"
                )


def is_qat_prepared(model: nn.Module) -> bool:
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    return any(
        isinstance(m, (FakeQuantizedLinear, FakeQuantizedEmbedding, ExpertFakeQuant)) for m in model.modules()
    )


def prepare_qat(model: nn.Module, qat_cfg: Any) -> nn.Module:
    """Install fake quantization in place (and return the model). Idempotent.

    ``qat_cfg``: ``params.qat``, a checkpoint's ``qat`` dict, or a :class:`QATSpec`.
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from ..model.moe import RoutedExperts

    spec = qat_spec(qat_cfg)
    if is_qat_prepared(model):
        return model
    check_group_size(model, spec)
    tied = _tied(model)
    quantize_(model, QATConfig(linear_config(spec), step="prepare"), filter_fn=_is_linear)
    if spec.quantize_embedding:
        quantize_(model, QATConfig(embedding_config(spec), step="prepare"), filter_fn=_is_embedding)
    for experts in model.modules():
        if isinstance(experts, RoutedExperts):
            experts.fake_quant = ExpertFakeQuant()
    if tied and not _tied(model):  # torchao keeps the tie; check
        raise RuntimeError("fake quantization untied the embedding from the LM head")
    return model


def convert_qat(model: nn.Module, qat_cfg: Any) -> nn.Module:
    """The converted eager model: packed INT4 experts, torchao-quantized linears and embedding.

    Works on a prepared model or a plain float one loaded from a QAT checkpoint (it is
    prepared first, which is deterministic). In place; returns the model in eval mode.
    The linears lower to the same XNNPACK program as post-training quantization of these
    weights; the routed experts become ``QuantizedExperts`` (the kernel's packed buffers).
    """
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear, QATConfig

    from ..model.moe import MoEFeedForward, RoutedExperts

    spec = qat_spec(qat_cfg)
    prepare_qat(model, spec)
    model.eval()
    for m in model.modules():
        if isinstance(m, MoEFeedForward) and isinstance(m.experts, RoutedExperts):
            m.experts = QuantizedExperts(m.experts.w13, m.experts.w2)
    lin, emb = linear_config(spec), embedding_config(spec)
    # Fake-quantized modules: torchao's convert (swap back, then apply the base config).
    quantize_(
        model, QATConfig(lin, step="convert"), filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedLinear)
    )
    if spec.quantize_embedding:
        quantize_(
            model,
            QATConfig(emb, step="convert"),
            filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedEmbedding),
        )
    return model


def _tied(model: nn.Module) -> bool:
    out, emb = getattr(model, "output", None), getattr(model, "tok_embeddings", None)
    return out is not None and emb is not None and out.weight is emb.weight

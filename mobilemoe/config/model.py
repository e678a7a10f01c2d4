"""The ``model`` section: one decoder for dense and MoE models.

Field comments say why a field exists; the paper's values live in ``presets/`` and are
traced to ``docs/paper.md`` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .base import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, fail, positive, require


@dataclass
class RopeScaling:
    """llama3-style RoPE frequency scaling (long-context extension)."""

    factor: PositiveFloat = 16.0  # context stretch (factor 16: docs/paper.md#mobilemoe-s-architecture)
    original_context: PositiveInt = 8192  # context of the unscaled frequencies (same section)
    low_freq_factor: PositiveFloat = 1.0  # llama3 defaults: wavelengths above ctx/low are scaled fully
    high_freq_factor: PositiveFloat = 4.0  # ... below ctx/high are left untouched

    def validate(self, key: str) -> None:
        require(
            self.high_freq_factor > self.low_freq_factor,
            f"{key}.high_freq_factor",
            "must be greater than low_freq_factor",
        )


@dataclass
class MoEConfig:
    """Fine-grained routed experts + optional shared experts (DeepSeekMoE / MobileMoE)."""

    n_routed_experts: PositiveInt = 8  # experts the router chooses among
    expert_hidden: PositiveInt = 64  # SwiGLU hidden width of one routed expert (fine-grained = small)
    top_k: PositiveInt = 2  # routed experts active per token
    n_shared_experts: NonNegativeInt = 1  # always-on experts (0 = none, as in OLMoE)
    shared_hidden: NonNegativeInt = 128  # SwiGLU hidden width of each shared expert
    n_dense_layers: NonNegativeInt = 0  # the first k layers use a dense SwiGLU FFN instead of MoE
    router: Literal["sigmoid", "softmax"] = "sigmoid"  # sigmoid: MobileMoE; softmax: OLMoE
    route_scale: PositiveFloat = 1.0  # top-k weights are multiplied by this (2.5: docs/paper.md#routing)
    renormalize: bool = True  # top-k weights renormalised to sum to 1 before scaling
    bias_update_rate: NonNegativeFloat = 0.0  # u in b_e += u*sign(mean_load - load_e); 0 = no bias balancing
    aux_loss_weight: NonNegativeFloat = 0.0  # OLMoE load-balancing loss weight (0.01 there)
    z_loss_weight: NonNegativeFloat = 0.0  # OLMoE router z-loss weight (0.001 there)

    def validate(self, key: str) -> None:
        if self.n_shared_experts:
            positive(self, key, "shared_hidden")
        require(
            self.top_k <= self.n_routed_experts,
            f"{key}.top_k",
            f"top_k={self.top_k} is more than n_routed_experts={self.n_routed_experts}",
        )
        if self.router == "softmax" and self.bias_update_rate > 0:
            fail(
                f"{key}.bias_update_rate",
                "bias balancing is for the sigmoid router; "
                "the softmax (OLMoE) router balances with aux_loss_weight",
            )


@dataclass
class ModelConfig:
    """Decoder-only transformer; ``moe: null`` makes it dense."""

    name: str = "tiny"  # a label carried into checkpoints and reports
    # params: this section is the model. scaling: the flow's scaling step designs the model
    # under scaling's budgets from the fitted law (docs/scaling.md#design-in-the-flow); the
    # keys here are then the base it keeps (vocabulary, head width, RoPE, router, ...).
    source: Literal["params", "scaling"] = "params"
    vocab_size: PositiveInt = 4096  # also the tokenizer's vocab size (the data stage reads this key)
    d_model: PositiveInt = 128
    n_layers: PositiveInt = 4
    n_heads: PositiveInt = 4
    n_kv_heads: PositiveInt = 2  # grouped-query attention: heads share K/V in groups
    head_dim: Optional[PositiveInt] = None  # null = d_model / n_heads
    qk_norm: bool = True  # RMSNorm on q and k per head (stabilises attention logits)
    norm_eps: PositiveFloat = 1e-5  # MobileMoE's (docs/paper.md#mobilemoe-s-architecture)
    rope_theta: PositiveFloat = 500000.0  # MobileMoE's (same section)
    rope_scaling: Optional[RopeScaling] = None
    max_seq_len: PositiveInt = 256  # longest sequence trained and the exported KV-cache length
    tie_embeddings: bool = True  # output projection shares the embedding matrix
    sliding_window: Optional[PositiveInt] = None  # window of local-attention layers (null = all global)
    global_every: PositiveInt = 1  # with a window: every n-th layer is global (4 = 3 local : 1 global)
    ffn_hidden: PositiveInt = 512  # SwiGLU hidden width of dense layers (all layers when moe is null)
    init_std: PositiveFloat = 0.02  # std of the normal init; output projections scaled by 1/sqrt(2L)
    moe: Optional[MoEConfig] = None

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.moe.n_dense_layers

    def is_local_layer(self, layer: int) -> bool:
        """True where the layer attends only within ``sliding_window`` (3 local : 1 global)."""
        return self.sliding_window is not None and (layer + 1) % self.global_every != 0

    def validate(self, key: str) -> None:
        k = f"{key}." if key else ""
        if self.head_dim is None and self.d_model % self.n_heads:
            fail(
                k + "n_heads",
                f"n_heads={self.n_heads} does not divide d_model={self.d_model} "
                "(set head_dim explicitly or change n_heads)",
            )
        if self.n_heads % self.n_kv_heads:
            fail(k + "n_kv_heads", f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        if self.resolved_head_dim % 2:
            fail(k + "head_dim", f"head dim {self.resolved_head_dim} must be even for RoPE")
        if self.moe is not None and self.moe.n_dense_layers > self.n_layers:
            fail(
                k + "moe.n_dense_layers",
                f"{self.moe.n_dense_layers} dense layers but only n_layers={self.n_layers}",
            )
        if self.vocab_size < 260:
            fail(k + "vocab_size", "must be at least 260 (256 bytes + special tokens)")

"""Our ``model`` config <-> a transformers config of an architecture transformers ships.

    arch = architecture_for(cfg)               # "Glm4MoeForCausalLM" | "Qwen3ForCausalLM" | ...
    kwargs = to_hf_kwargs(cfg)                 # the config.json fields (plain values)
    cfg = from_hf_config(hf_config, "DIR")     # a transformers config object -> ModelConfig

Which architecture (each detail checked against transformers 5's modeling code):

* sigmoid router (MobileMoE) -> ``Glm4MoeForCausalLM``: sigmoid scores, ``e_score_correction_bias``
  added for the top-k choice only, gates = chosen scores renormalised (``norm_topk_prob``)
  times ``routed_scaling_factor``; one shared SwiGLU of ``n_shared_experts x
  moe_intermediate_size``; the first ``first_k_dense_replace`` layers dense; per-head
  QK RMSNorm (``use_qk_norm``). Traps: its config defaults ``partial_rotary_factor`` to 0.5
  and ``first_k_dense_replace`` to 1 (both always written), and it declares no
  ``head_dim`` field (its attention reads ``config.head_dim`` when present, else hidden /
  heads: written explicitly).
* softmax router without shared experts (OLMoE-style) -> ``Qwen3MoeForCausalLM``: softmax,
  top-k, ``norm_topk_prob`` = our ``renormalize``; no route scale; per-head QK-norm always;
  a window (``use_sliding_window``) applies to every layer.
* dense -> ``Qwen3ForCausalLM``: per-head QK-norm always, GQA, ``layer_types`` for the
  3:1 sliding-window pattern. Its window ``w`` lets query q see keys k with q - k < w,
  as ours does.

Fields of ours that transformers has no place for (``bias_update_rate``, ``z_loss_weight``,
``name``) are training settings, not the function the weights compute; they travel in the
exported folder's ``mobilemoe.json`` (``mobilemoe.hf.convert``).
"""

from __future__ import annotations

from typing import Any, Optional

from ..config.base import to_dict
from ..config.model import ModelConfig, MoEConfig, RopeScaling
from ..errors import UserError
from ..tokens import BOS_ID, EOS_ID, PAD_ID

GLM4_MOE, QWEN3, QWEN3_MOE = "Glm4MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"
MODEL_TYPES = {GLM4_MOE: "glm4_moe", QWEN3: "qwen3", QWEN3_MOE: "qwen3_moe"}
ARCHITECTURES = tuple(MODEL_TYPES)
# Settings of ours that decide training, not what the weights compute.
TRAINING_ONLY = ("name", "source", "init_std", "max_seq_len")
TRAINING_ONLY_MOE = ("bias_update_rate", "aux_loss_weight", "z_loss_weight")


class HFMappingError(UserError):
    """A model or a transformers folder that the mapping cannot express exactly."""


def _refuse(field: str, why: str) -> None:
    raise HFMappingError(f"{field}: {why}")


def shared_width(moe: MoEConfig) -> int:
    return moe.n_shared_experts * moe.shared_hidden


def local_layers(cfg: ModelConfig) -> list[bool]:
    return [cfg.is_local_layer(i) for i in range(cfg.n_layers)]


# -- ours -> transformers ------------------------------------------------------------------
def architecture_for(cfg: ModelConfig) -> str:
    """The transformers architecture that computes ``cfg``; refuses what none does exactly."""
    moe = cfg.moe
    local = local_layers(cfg)
    if moe is None:
        if not cfg.qk_norm:
            _refuse(
                "model.qk_norm", "false has no mapping: Qwen3ForCausalLM always normalises q and k per head"
            )
        return QWEN3
    if moe.router == "sigmoid":
        if any(local):
            _refuse(
                "model.sliding_window",
                "Glm4MoeForCausalLM (the sigmoid-router MoE) has no sliding-window attention",
            )
        if moe.n_routed_experts < 2:
            _refuse("model.moe.n_routed_experts", "Glm4Moe's router needs at least 2 experts")
        if shared_width(moe) % moe.expert_hidden:
            _refuse(
                "model.moe.shared_hidden",
                f"shared width {moe.n_shared_experts} x {moe.shared_hidden} is not a multiple of "
                f"expert_hidden={moe.expert_hidden}: Glm4Moe's shared expert is n_shared_experts x "
                "moe_intermediate_size wide",
            )
        return GLM4_MOE
    if shared_width(moe):
        _refuse(
            "model.moe.n_shared_experts",
            "the softmax-router MoE maps to Qwen3MoeForCausalLM, which has no shared expert",
        )
    if moe.route_scale != 1.0:
        _refuse(
            "model.moe.route_scale", f"{moe.route_scale}: Qwen3MoeForCausalLM has no route scale (1.0 only)"
        )
    if not cfg.qk_norm:
        _refuse(
            "model.qk_norm", "false has no mapping: Qwen3MoeForCausalLM always normalises q and k per head"
        )
    if any(local) and not all(local):
        _refuse(
            "model.global_every",
            "Qwen3MoeForCausalLM applies its window to every layer; a local:global pattern does not map",
        )
    return QWEN3_MOE


def rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "partial_rotary_factor": 1.0}
    s = cfg.rope_scaling
    if s is None:
        return {"rope_type": "default", **rope}
    return {
        "rope_type": "llama3",
        **rope,
        "factor": s.factor,
        "original_max_position_embeddings": s.original_context,
        "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor,
    }


def to_hf_kwargs(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The transformers config fields of ``cfg`` (for its class of :func:`architecture_for`)."""
    arch = architecture_for(cfg)
    out: dict[str, Any] = {
        "architectures": [arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rope_parameters": rope_parameters(cfg),
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "dtype": dtype,
    }
    moe = cfg.moe
    local = local_layers(cfg)
    if arch == QWEN3:
        out.update(
            use_sliding_window=any(local),
            sliding_window=cfg.sliding_window if any(local) else None,
            max_window_layers=cfg.n_layers,
            layer_types=["sliding_attention" if x else "full_attention" for x in local],
        )
    elif arch == GLM4_MOE and moe is not None:
        out.update(
            moe_intermediate_size=moe.expert_hidden,
            num_experts_per_tok=moe.top_k,
            n_routed_experts=moe.n_routed_experts,
            n_shared_experts=shared_width(moe) // moe.expert_hidden,
            routed_scaling_factor=moe.route_scale,
            norm_topk_prob=moe.renormalize,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=moe.n_dense_layers,
            use_qk_norm=cfg.qk_norm,
            num_mtp_layers=0,
        )
    elif moe is not None:
        out.update(
            moe_intermediate_size=moe.expert_hidden,
            num_experts_per_tok=moe.top_k,
            num_experts=moe.n_routed_experts,
            norm_topk_prob=moe.renormalize,
            decoder_sparse_step=1,
            mlp_only_layers=list(range(moe.n_dense_layers)),
            router_aux_loss_coef=moe.aux_loss_weight,
            use_sliding_window=any(local),
            sliding_window=cfg.sliding_window if any(local) else None,
        )
    return out


def hf_config(cfg: ModelConfig, dtype: str = "float32"):
    """The transformers config object of ``cfg`` (its own class, defaults applied)."""
    from transformers import AutoConfig

    kwargs = to_hf_kwargs(cfg, dtype)
    return AutoConfig.for_model(MODEL_TYPES[kwargs["architectures"][0]], **kwargs)


# -- transformers -> ours ------------------------------------------------------------------
def _get(hf, name: str, default: Any = None) -> Any:
    return getattr(hf, name, default)


def _window_pattern(n_layers: int, local: list[bool], source: str) -> int:
    """``global_every`` whose pattern (layer i local unless (i+1) % g == 0) is ``local``."""
    for g in range(1, n_layers + 2):
        if all(x == ((i + 1) % g != 0) for i, x in enumerate(local)):
            return g
    _refuse(
        f"{source}: layer_types",
        "this pattern of sliding/full layers is not 'every n-th layer full' (model.global_every)",
    )
    raise AssertionError  # unreachable


def _rope(hf, source: str) -> tuple[float, Optional[RopeScaling]]:
    rope = dict(_get(hf, "rope_parameters") or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        _refuse(f"{source}: rope_parameters", "per-layer-type RoPE parameters are not supported")
    partial = rope.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        _refuse(
            f"{source}: rope_parameters.partial_rotary_factor",
            f"{partial}: partial RoPE is not supported (ours rotates the whole head)",
        )
    kind = rope.get("rope_type", "default")
    theta = float(rope.get("rope_theta", _get(hf, "rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        _refuse(f"{source}: rope_parameters.rope_type", f"{kind!r} is not supported (default or llama3)")
    return theta, RopeScaling(
        factor=float(rope["factor"]),
        original_context=int(rope["original_max_position_embeddings"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
    )


def from_hf_config(hf, source: str, name: Optional[str] = None) -> ModelConfig:
    """Our ModelConfig of a transformers config object (``AutoConfig.from_pretrained``).

    Refuses, naming the field, an architecture we do not map and any setting that would
    make the model compute something else than ours (attention bias, partial RoPE, expert
    groups, an activation other than SiLU, ...)."""
    archs = list(_get(hf, "architectures") or [])
    arch = archs[0] if archs else None
    if arch == "OlmoeForCausalLM" or _get(hf, "model_type") == "olmoe":
        _refuse(
            f"{source}: architectures",
            "OlmoeForCausalLM normalises q and k over the whole projection (QK-norm width "
            "heads x head_dim = hidden_size), ours per head (width head_dim): the same weights "
            "compute another function here, so a real OLMoE folder is not imported (our "
            "olmoe-1b-7b preset exports as Qwen3MoeForCausalLM)",
        )
    if arch not in ARCHITECTURES:
        _refuse(
            f"{source}: architectures",
            f"{archs or 'none'} is not mapped (mapped: {', '.join(ARCHITECTURES)})",
        )
    if _get(hf, "hidden_act", "silu") != "silu":
        _refuse(f"{source}: hidden_act", f"{_get(hf, 'hidden_act')!r}: only silu (SwiGLU) is supported")
    if _get(hf, "attention_bias", False):
        _refuse(f"{source}: attention_bias", "true: biases in the attention projections are not supported")
    if _get(hf, "mlp_bias", False):
        _refuse(f"{source}: mlp_bias", "true: biases in the MLP are not supported")
    theta, scaling = _rope(hf, source)
    n_layers, heads = int(hf.num_hidden_layers), int(hf.num_attention_heads)
    head_dim = _get(hf, "head_dim") or hf.hidden_size // heads
    kw: dict[str, Any] = dict(
        name=name or str(_get(hf, "model_type")),
        vocab_size=int(hf.vocab_size),
        d_model=int(hf.hidden_size),
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=int(_get(hf, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        qk_norm=True,
        norm_eps=float(hf.rms_norm_eps),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=int(hf.max_position_embeddings),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        ffn_hidden=int(hf.intermediate_size),
        init_std=float(_get(hf, "initializer_range", 0.02)),
    )
    window = _get(hf, "sliding_window")
    if arch == QWEN3:
        types = list(_get(hf, "layer_types") or ["full_attention"] * n_layers)
        local = [t == "sliding_attention" for t in types]
        if window is not None and any(local):
            kw.update(sliding_window=int(window), global_every=_window_pattern(n_layers, local, source))
        return ModelConfig(**kw)
    if arch == GLM4_MOE:
        if _get(hf, "n_group", 1) != 1:
            _refuse(f"{source}: n_group", f"{hf.n_group}: expert groups (n_group > 1) are not supported")
        if _get(hf, "topk_group", 1) != 1:
            _refuse(f"{source}: topk_group", f"{hf.topk_group}: only 1 (with n_group 1) is supported")
        n_shared = int(hf.n_shared_experts)
        moe = MoEConfig(
            n_routed_experts=int(hf.n_routed_experts),
            expert_hidden=int(hf.moe_intermediate_size),
            top_k=int(hf.num_experts_per_tok),
            n_shared_experts=1 if n_shared else 0,
            shared_hidden=n_shared * int(hf.moe_intermediate_size),
            n_dense_layers=int(hf.first_k_dense_replace),
            router="sigmoid",
            route_scale=float(hf.routed_scaling_factor),
            renormalize=bool(hf.norm_topk_prob),
        )
        kw.update(qk_norm=bool(_get(hf, "use_qk_norm", False)), moe=moe)
        return ModelConfig(**kw)
    # Qwen3Moe
    if _get(hf, "decoder_sparse_step", 1) != 1:
        _refuse(f"{source}: decoder_sparse_step", f"{hf.decoder_sparse_step}: only 1 (every layer MoE) maps")
    dense = sorted(_get(hf, "mlp_only_layers") or [])
    if dense != list(range(len(dense))):
        _refuse(f"{source}: mlp_only_layers", f"{dense}: only the first k layers may be dense")
    moe = MoEConfig(
        n_routed_experts=int(hf.num_experts),
        expert_hidden=int(hf.moe_intermediate_size),
        top_k=int(hf.num_experts_per_tok),
        n_shared_experts=0,
        shared_hidden=0,
        n_dense_layers=len(dense),
        router="softmax",
        route_scale=1.0,
        renormalize=bool(hf.norm_topk_prob),
        aux_loss_weight=float(_get(hf, "router_aux_loss_coef", 0.0) or 0.0),
    )
    kw.update(moe=moe)
    if window is not None:
        kw.update(sliding_window=int(window), global_every=n_layers + 1)  # every layer local
    return ModelConfig(**kw)


# -- comparing -------------------------------------------------------------------------------
def architecture(cfg: ModelConfig) -> dict[str, Any]:
    """What decides the function the weights compute, in one canonical form: training-only
    fields dropped, the head dim resolved, n shared experts of width h as one of n x h,
    an unused dense width or window pattern dropped."""
    d = to_dict(cfg)
    for k in TRAINING_ONLY:
        d.pop(k, None)
    d["head_dim"] = cfg.resolved_head_dim
    if not any(local_layers(cfg)):
        d["sliding_window"], d["global_every"] = None, 1
    moe = cfg.moe
    if moe is not None:
        m = d["moe"]
        for k in TRAINING_ONLY_MOE:
            m.pop(k, None)
        m["shared_width"] = shared_width(moe)
        m.pop("n_shared_experts"), m.pop("shared_hidden")
        if moe.n_dense_layers == 0:
            d.pop("ffn_hidden")
    return d


def architecture_diff(want: ModelConfig, have: ModelConfig) -> list[str]:
    a, b = _flat(architecture(want)), _flat(architecture(have))
    return [f"{k}: {b.get(k)!r} vs {a.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _flat(d: Any, prefix: str = "model") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out

"""Weight names and layouts: our state dict <-> the transformers one, both ways, exactly.

    hf = to_hf_state(model.state_dict(), cfg)        # per-expert tensors, as transformers saves
    ours = from_hf_state(tensors, cfg, "DIR")        # also accepts fused 3-D experts

Ours stacks the routed experts (``w13 [E, 2H, D]`` gate then up, ``w2 [E, D, H]``) and
fuses gate/up of dense and shared SwiGLUs (``gate_up [2H, D]``); transformers 5 keeps the
experts fused in memory (``experts.gate_up_proj [E, 2H, D]``, gate first, and
``experts.down_proj [E, D, H]``: the same layout as ours) but saves them per expert
(``experts.{e}.gate_proj.weight``), the format vLLM, SGLang and llama.cpp's converter read;
dense and shared MLPs have separate ``gate_proj``/``up_proj``. Only renames, slices and
concatenations: a round trip returns the same bits.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from ..config.model import ModelConfig
from .mapping import GLM4_MOE, HFMappingError, architecture_for

# Ours -> transformers names of the parts that are plain renames.
_ATTN = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
}


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g, u = t.chunk(2, dim=0)
    return g.clone(), u.clone()  # own storage: safetensors refuses tensors sharing memory


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The transformers state dict (names and layout) of our ``state`` (a model's
    ``state_dict()``); a tied LM head is left out, as transformers saves it."""
    arch = architecture_for(cfg)
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": state["tok_embeddings.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["output.weight"]
    out["model.norm.weight"] = state["norm.weight"]
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = state[p + "attn_norm.weight"]
        out[q + "post_attention_layernorm.weight"] = state[p + "ffn_norm.weight"]
        for ours, theirs in _ATTN.items():
            if p + f"attn.{ours}.weight" in state:
                out[q + f"self_attn.{theirs}.weight"] = state[p + f"attn.{ours}.weight"]
        if not cfg.is_moe_layer(i):
            g, u = _split(state[p + "ffn.gate_up.weight"])
            out.update({q + "mlp.gate_proj.weight": g, q + "mlp.up_proj.weight": u})
            out[q + "mlp.down_proj.weight"] = state[p + "ffn.down.weight"]
            continue
        out[q + "mlp.gate.weight"] = state[p + "ffn.router.weight"]
        bias = state[p + "ffn.router.expert_bias"]
        if arch == GLM4_MOE:
            out[q + "mlp.gate.e_score_correction_bias"] = bias
        elif bool(bias.any()):
            raise HFMappingError(
                f"{p}ffn.router.expert_bias: non-zero, but the softmax router never uses it and "
                "Qwen3MoeForCausalLM has no place for it"
            )
        w13, w2 = state[p + "ffn.experts.w13"], state[p + "ffn.experts.w2"]
        for e in range(w13.shape[0]):
            g, u = _split(w13[e])
            x = q + f"mlp.experts.{e}."
            out.update(
                {x + "gate_proj.weight": g, x + "up_proj.weight": u, x + "down_proj.weight": w2[e].clone()}
            )
        if p + "ffn.shared.gate_up.weight" in state:
            g, u = _split(state[p + "ffn.shared.gate_up.weight"])
            out.update(
                {q + "mlp.shared_experts.gate_proj.weight": g, q + "mlp.shared_experts.up_proj.weight": u}
            )
            out[q + "mlp.shared_experts.down_proj.weight"] = state[p + "ffn.shared.down.weight"]
        elif arch == GLM4_MOE:  # no shared expert: transformers builds one of width 0
            d = cfg.d_model
            empty = state[p + "ffn.router.weight"].new_zeros
            out.update(
                {
                    q + "mlp.shared_experts.gate_proj.weight": empty((0, d)),
                    q + "mlp.shared_experts.up_proj.weight": empty((0, d)),
                    q + "mlp.shared_experts.down_proj.weight": empty((d, 0)),
                }
            )
    return {k: v.contiguous() for k, v in out.items()}


class _Reader:
    """Takes tensors out of the transformers state by name; what is left is unexpected."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str):
        self.tensors, self.source = dict(tensors), source
        self.missing: list[str] = []

    def take(self, name: str) -> torch.Tensor:
        t = self.tensors.pop(name, None)
        if t is None:
            self.missing.append(name)
            return torch.empty(0)
        return t

    def has(self, name: str) -> bool:
        return name in self.tensors

    def experts(self, q: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13 [E, 2H, D], w2 [E, D, H]) from per-expert or fused tensors."""
        if self.has(q + "mlp.experts.gate_up_proj"):
            return self.take(q + "mlp.experts.gate_up_proj"), self.take(q + "mlp.experts.down_proj")
        w13, w2 = [], []
        for e in range(n):
            x = q + f"mlp.experts.{e}."
            g, u = self.take(x + "gate_proj.weight"), self.take(x + "up_proj.weight")
            w13.append(torch.cat([g, u], dim=0))
            w2.append(self.take(x + "down_proj.weight"))
        if self.missing:
            return torch.empty(0), torch.empty(0)
        return torch.stack(w13), torch.stack(w2)


def from_hf_state(
    tensors: dict[str, torch.Tensor],
    cfg: ModelConfig,
    source: str,
    ignore: Callable[[str], bool] = lambda name: False,
) -> dict[str, torch.Tensor]:
    """Our state dict from the transformers tensors of a model of config ``cfg``.

    Missing tensors and unexpected ones (beyond ``ignore``) stop with the first few names;
    so does a tied model whose file holds an LM head that differs from the embedding."""
    arch = architecture_for(cfg)
    r = _Reader(tensors, source)
    out: dict[str, torch.Tensor] = {"tok_embeddings.weight": r.take("model.embed_tokens.weight")}
    head = r.tensors.pop("lm_head.weight", None) if cfg.tie_embeddings else r.take("lm_head.weight")
    if cfg.tie_embeddings and head is not None and not torch.equal(head, out["tok_embeddings.weight"]):
        raise HFMappingError(
            f"{source}: lm_head.weight differs from model.embed_tokens.weight but "
            "tie_word_embeddings is true; fix config.json"
        )
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        out[p + "attn_norm.weight"] = r.take(q + "input_layernorm.weight")
        for ours, theirs in _ATTN.items():
            if theirs.endswith("norm") and not cfg.qk_norm:
                continue
            out[p + f"attn.{ours}.weight"] = r.take(q + f"self_attn.{theirs}.weight")
        out[p + "ffn_norm.weight"] = r.take(q + "post_attention_layernorm.weight")
        if not cfg.is_moe_layer(i):
            g, u = r.take(q + "mlp.gate_proj.weight"), r.take(q + "mlp.up_proj.weight")
            out[p + "ffn.gate_up.weight"] = torch.cat([g, u], dim=0)
            out[p + "ffn.down.weight"] = r.take(q + "mlp.down_proj.weight")
            continue
        assert cfg.moe is not None
        out[p + "ffn.router.weight"] = r.take(q + "mlp.gate.weight")
        if arch == GLM4_MOE:
            out[p + "ffn.router.expert_bias"] = r.take(q + "mlp.gate.e_score_correction_bias")
        else:
            out[p + "ffn.router.expert_bias"] = torch.zeros(cfg.moe.n_routed_experts)
        out[p + "ffn.experts.w13"], out[p + "ffn.experts.w2"] = r.experts(q, cfg.moe.n_routed_experts)
        if arch == GLM4_MOE:
            g, u = (
                r.take(q + "mlp.shared_experts.gate_proj.weight"),
                r.take(q + "mlp.shared_experts.up_proj.weight"),
            )
            down = r.take(q + "mlp.shared_experts.down_proj.weight")
            if cfg.moe.n_shared_experts:
                out[p + "ffn.shared.gate_up.weight"] = torch.cat([g, u], dim=0)
                out[p + "ffn.shared.down.weight"] = down
    out["norm.weight"] = r.take("model.norm.weight")
    unexpected = sorted(k for k in r.tensors if not ignore(k) and not _is_buffer(k))
    if r.missing or unexpected:
        parts = [f"{len(r.missing)} missing, e.g. {r.missing[:4]}"] if r.missing else []
        parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[:4]}"] if unexpected else []
        raise HFMappingError(f"{source}: weights do not match config.json ({'; '.join(parts)})")
    return out


def _is_buffer(name: str) -> bool:
    """Non-persistent buffers some writers save (RoPE frequencies): recomputed, not weights."""
    return bool(re.search(r"rotary_emb\.(inv_freq|original_inv_freq)$", name))

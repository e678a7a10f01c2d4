"""The MobileMoE decoder: one code base for MoE and dense models.

Read top to bottom: norm, RoPE, attention (GQA, QK-norm, sliding window, static KV
cache), block, model. ``MobileMoE(cfg)(tokens)`` is the training forward (causal, no
cache); after ``setup_cache(batch, max_len)``, ``model(tokens, input_pos)`` writes K/V
at ``input_pos`` and attends over the cache (prefill and decode alike), which is the
form ``torch.export`` and ExecuTorch's LLM runner use. ``model(tokens, positions=P,
attn_mask=M)`` runs packed sequences (several sequences, or a prefix tree of them, in one
row; per-token RoPE positions and one boolean mask, True = may attend); evaluation builds
those rows and may pass its own attention function for them (``attend``).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config.model import ModelConfig, RopeScaling
from .moe import MoEFeedForward, RoutedExperts, Router, SwiGLU

# How an explicit mask is applied: (q, k, v, attn_mask=additive mask, **sdpa options) ->
# out, with the signature of torch's scaled_dot_product_attention (the default).
AttendFn = Callable[..., torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (bf16 sums of squares lose precision at d_model 768+).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling]) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv_freq.float()
    # llama3 scaling: long wavelengths divided by `factor`, short ones kept, a smooth
    # blend in between (Llama 3.1 reference implementation).
    low_wavelen = scaling.original_context / scaling.low_freq_factor
    high_wavelen = scaling.original_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, blended)
    out = torch.where(wavelen < high_wavelen, inv_freq, out)
    return out.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, T, hd); cos/sin: (T, hd/2) or (B, 1, T, hd/2). Rotate-half convention."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    k_cache: Optional[torch.Tensor]  # buffers, typed for the checker
    v_cache: Optional[torch.Tensor]

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.resolved_head_dim
        self.window = cfg.sliding_window if cfg.is_local_layer(layer) else None
        hd = self.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(hd, cfg.norm_eps) if cfg.qk_norm else None
        # Static KV cache (setup_cache); buffers so torch.export treats them as mutable state.
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def setup_cache(self, batch: int, max_len: int, dtype: torch.dtype, device) -> None:
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def forward(
        self,
        x,
        cos,
        sin,
        input_pos: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        attend: Optional[AttendFn] = None,
    ):
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.wq(x).view(B, T, self.n_heads, hd).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, hd).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, hd).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is not None:
            if self.k_cache is None or self.v_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_cache() first")
            # Static cache: write this chunk's K/V at its positions, attend over all slots;
            # the mask hides slots beyond each query's position (never read unwritten ones).
            self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
            self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
            k, v = self.k_cache.to(q.dtype), self.v_cache.to(q.dtype)
        rep = self.n_heads // self.n_kv_heads
        gqa: dict[str, Any] = {}
        if rep > 1 and (torch.is_grad_enabled() or torch.compiler.is_exporting()):
            # Training and the exported graph keep explicit K/V heads: the backward (and so
            # the trained weights) and what ExecuTorch's lowering sees stay as measured.
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        elif rep > 1:
            gqa = {"enable_gqa": True}  # inference: same result, no K/V copies per query head
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        else:
            out = (attend or F.scaled_dot_product_attention)(q, k, v, attn_mask=mask, **gqa)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * hd))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn: nn.Module
        if cfg.moe is not None and cfg.is_moe_layer(layer):
            self.ffn = MoEFeedForward(cfg.d_model, cfg.moe)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, cos, sin, input_pos, mask, attend: Optional[AttendFn] = None):
        x = x + self.attn(self.attn_norm(x), cos, sin, input_pos, mask, attend)
        return x + self.ffn(self.ffn_norm(x))


class MobileMoE(nn.Module):
    inv_freq: torch.Tensor  # a buffer, typed for the checker

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # First, so the draw is the same whether the model is built on a device or on
        # "meta" (submodule constructors may consume the global RNG after it).
        self.init_seed = draw_init_seed()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        inv_freq = rope_inv_freq(cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.has_local_layers = any(cfg.is_local_layer(i) for i in range(cfg.n_layers))
        self.cache_len = 0
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    # -- init ---------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, names: Optional[set[str]] = None) -> None:
        """Initialise the parameters (only those in ``names``, if given) and their buffers.

        Each parameter draws from its own generator, seeded by ``init_seed`` and its name,
        so the weights do not depend on the order or the machine they are made in: a
        rank that materializes one block at a time before sharding it
        (``mobilemoe.train.fsdp.shard_model``) makes the same weights as one process
        that builds the whole model."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)  # residual projections (GPT-2)
        for name, p in self.named_parameters():
            if names is not None and name not in names:
                continue
            if p.ndim == 1:  # norms
                p.fill_(1.0)
                continue
            g = torch.Generator(device=p.device).manual_seed(_param_seed(self.init_seed, name))
            residual = name.endswith(("wo.weight", "down.weight", ".w2"))
            p.normal_(0.0, out_std if residual else std, generator=g)
        for mname, m in self.named_modules():
            if isinstance(m, Router) and (names is None or f"{mname}.weight" in names):
                m.expert_bias.zero_()
                m.load_accum.zero_()
        if not self.inv_freq.is_meta:
            self.inv_freq.copy_(
                rope_inv_freq(self.cfg.resolved_head_dim, self.cfg.rope_theta, self.cfg.rope_scaling)
            )

    def materialize(self, device: str | torch.device, prefix: str = "") -> None:
        """Allocate on ``device`` and initialise what is still on "meta" under ``prefix``
        (a module path such as ``"layers.3."``; "" = all of it). Parameters made earlier
        (a block already materialized, or sharded) are left as they are."""
        made: set[str] = set()
        for mname, m in self.named_modules():
            if prefix and not (mname + ".").startswith(prefix):
                continue
            own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
            if any(t.is_meta for t in own):
                m.to_empty(device=device, recurse=False)
                made.update(f"{mname}.{n}" if mname else n for n, _ in m.named_parameters(recurse=False))
        if self.cfg.tie_embeddings:  # to_empty made the tied weight twice
            self.output.weight = self.tok_embeddings.weight
        self.reset_parameters(made)

    # -- cache ----------------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        return cast(list[Block], list(self.layers))

    def setup_cache(self, batch: int = 1, max_len: Optional[int] = None, dtype=None) -> None:
        max_len = max_len or self.cfg.max_seq_len
        p = self.tok_embeddings.weight
        for layer in self.blocks():
            layer.attn.setup_cache(batch, max_len, dtype or torch.float32, p.device)
        self.cache_len = max_len

    def reset_cache(self) -> None:
        for layer in self.blocks():
            if layer.attn.k_cache is not None and layer.attn.v_cache is not None:
                layer.attn.k_cache.zero_()
                layer.attn.v_cache.zero_()

    def _masks(self, T: int, input_pos, key_valid, device):
        """Boolean attention masks (True = attend), one per distinct window; None = causal."""
        if input_pos is None:
            q_pos = torch.arange(T, device=device)
            k_pos = q_pos
        else:
            q_pos = input_pos
            k_pos = torch.arange(self.cache_len, device=device)
        if input_pos is None and key_valid is None and not self.has_local_layers:
            return None, None
        causal = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # (T, S)
        if key_valid is not None:
            # A query always sees its own slot, so a padding row is never fully masked
            # (SDPA would return NaN there, and NaN values leak through zero weights).
            own = k_pos.unsqueeze(0) == q_pos.unsqueeze(1)
            causal = (causal.unsqueeze(0) & key_valid.unsqueeze(1)) | own  # (B, T, S)
            causal = causal.unsqueeze(1)  # (B, 1, T, S)
        local = None
        window = self.cfg.sliding_window
        if self.has_local_layers and window is not None:
            near = (q_pos.unsqueeze(1) - k_pos.unsqueeze(0)) < window
            local = causal & near
        return causal, local

    def _packed_masks(self, positions: torch.Tensor, attn_mask: torch.Tensor, dtype: torch.dtype):
        """Masks of packed rows for each kind of layer: ``attn_mask`` as given (it must hide
        the future and other sequences), and for sliding-window layers also keys >= window
        behind. Additive float masks, built once per forward (SDPA converts a boolean mask
        on every call)."""
        if attn_mask.shape != (*positions.shape, positions.shape[1]):
            raise ValueError(
                f"attn_mask {tuple(attn_mask.shape)} must be (B, T, T) for positions {tuple(positions.shape)}"
            )
        full = attn_mask.unsqueeze(1)
        local = None
        window = self.cfg.sliding_window
        if self.has_local_layers and window is not None:
            near = (positions.unsqueeze(2) - positions.unsqueeze(1)) < window
            local = full & near.unsqueeze(1)

        def additive(m):
            if m is None:
                return None
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))

        return additive(full), additive(local)

    # -- forward --------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        key_valid: Optional[torch.Tensor] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        attend: Optional[AttendFn] = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab).

        tokens: (B, T) ids. input_pos: (T,) positions of these tokens; given = use the KV
        cache. key_valid: optional (B, S) bool, False for padding keys (S = T without a
        cache, the cache length with one). Packed rows instead (no cache): positions (B, T)
        the RoPE position of every token and attn_mask (B, T, T) bool, True where query t
        may attend to key s (each token's own sequence or prefix-tree ancestors, itself
        included, so no row is fully masked). attend: optional replacement for SDPA on
        packed rows, called per layer as ``attend(q, k, v, attn_mask=additive, **kw)``
        (evaluation's query-block attention, ``mobilemoe.eval.forward``).
        """
        B, T = tokens.shape
        if (positions is None) != (attn_mask is None):
            raise ValueError("packed rows need both positions and attn_mask")
        if attend is not None and positions is None:
            raise ValueError("attend applies to packed rows (positions, attn_mask) only")
        h = self.tok_embeddings(tokens)
        if positions is not None and attn_mask is not None:
            if input_pos is not None or key_valid is not None:
                raise ValueError("packed rows (positions, attn_mask) run without the KV cache")
            freqs = positions.float().unsqueeze(-1) * self.inv_freq  # (B, T, hd/2)
            cos, sin = freqs.cos().unsqueeze(1), freqs.sin().unsqueeze(1)
            full, local = self._packed_masks(positions, attn_mask, h.dtype)
        else:
            pos = input_pos if input_pos is not None else torch.arange(T, device=tokens.device)
            freqs = pos.float().unsqueeze(1) * self.inv_freq.unsqueeze(0)
            cos, sin = freqs.cos(), freqs.sin()
            full, local = self._masks(T, input_pos, key_valid, tokens.device)
        for layer in self.blocks():
            mask = local if layer.attn.window is not None else full
            h = layer(h, cos, sin, input_pos, mask, attend)
        return self.output(self.norm(h))

    # -- MoE helpers ----------------------------------------------------------------------
    def routers(self) -> list[Router]:
        return [m for m in self.modules() if isinstance(m, Router)]

    def aux_loss(self) -> Optional[torch.Tensor]:
        """Sum of the routers' auxiliary losses from the last training forward (OLMoE)."""
        losses = [r.aux_loss for r in self.routers() if r.aux_loss is not None]
        return cast(torch.Tensor, sum(losses)) if losses else None

    @torch.no_grad()
    def update_router_biases(self) -> list[torch.Tensor]:
        """Call after each optimizer step: balancing update; returns per-layer loads."""
        return [r.update_bias() for r in self.routers()]

    def routed_experts(self) -> list[RoutedExperts]:
        return [m for m in self.modules() if isinstance(m, RoutedExperts)]


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> MobileMoE:
    """Build on ``device`` ("meta" = shapes only, no weight memory; ``materialize`` later).

    The weights are a function of one draw from torch's global generator
    (``torch.manual_seed`` before building makes them reproducible) and the parameter
    names, whatever the device or the order of materialization."""
    with torch.device("meta"):
        model = MobileMoE(cfg)
    if torch.device(device).type != "meta":
        model.materialize(device)
    return model


def draw_init_seed() -> int:
    """One draw from torch's global CPU generator: the seed of a model's initialisation."""
    return int(torch.randint(0, 2**62, (1,), device="cpu").item())


def _param_seed(init_seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{init_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)

"""The model in the form the exporter traces: the same computation, in operators XNNPACK takes.

    program_model = ExportableMobileMoE(model, max_context_len=256)   # float or converted model
    logits_BTV = program_model(tokens_1T, input_pos_T)                # prefill and decode

A source transform (as ExecuTorch's llama export swaps modules before export), built from
a ``MobileMoE`` in float (routed experts) or converted by :func:`mobilemoe.quant.convert_qat`
(``QuantizedExperts``); it shares that model's weights. Why each piece
differs from the training modules (every difference is numerically neutral or a change of
summation order; the parity tests hold the program to the eager model):

* XNNPACK rejects reshapes with symbolic sizes, slices and splits of a dynamic dim, and
  ``mean`` except a 4-D mean over dims (2, 3): batch is 1, every reshape names at most one
  inferred (-1) dim, RMSNorm averages a ``[N, 1, 1, D]`` view, RoPE's rotate-half is a
  matmul with a signed permutation (exact: one +-1 per column), and the fused gate/up
  linears are split into two linears (rows, so INT4 groups and the per-token INT8
  activation quantization are unchanged).
* Attention is one call of mobilemoe's attention kernel per layer (``mmoe::attend_kv``,
  package ``mobilemoe_kernels``, docs/kernels.md), in the MoE and the dense programs alike:
  query t at position p reads only the cache slots it may see, [p - window + 1, p] for a
  sliding-window layer, [0, p] otherwise, with GQA (query head h reads KV head h // rep)
  and no mask. The call's K/V are first written into the static cache in place
  (``index_copy_``; the exporter's reinplace pass keeps it in place); K is cached
  transposed ``[KV, hd, S]``, V as ``[KV, S, hd]``, the layouts the kernel reads fastest.
  (Replaced XNNPACK batch matmuls over all S slots plus an additive mask, which repacked
  the whole cache every call: measured in benchmarks/attention.py.)
* The routed experts are one call of mobilemoe's top-k kernel per MoE layer
  (``mmoe::moe_ffn_8da4w`` on the packed INT4 experts, ``mmoe::moe_ffn_f32`` for fp32
  programs; package ``mobilemoe_kernels``, docs/kernels.md): decode reads only the chosen
  experts' weights, prefill groups tokens by expert. Routing is ``Router`` itself (the
  router linear runs in XNNPACK; topk, gather and the renormalisation are portable ops).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..model.moe import MoEFeedForward, RoutedExperts, SwiGLU
from ..model.transformer import Attention, MobileMoE, RMSNorm


class ExportRMSNorm(nn.Module):
    """``norm(x)`` returned as ``out_shape`` (one -1), in ops XNNPACK takes (fp32 programs)."""

    def __init__(self, norm: RMSNorm, out_shape: tuple[int, ...]):
        super().__init__()
        self.weight, self.eps, self.out_shape = norm.weight, norm.eps, tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D = x.shape[-1]
        x4 = x.reshape(-1, 1, 1, D)  # the 4-D global average pool XNNPACK delegates
        y4 = x4 * torch.rsqrt(x4.pow(2).mean((2, 3), keepdim=True) + self.eps)
        return (y4 * self.weight).reshape(self.out_shape)


def _rows(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of a linear weight, plain or torchao-quantized (groups run along rows)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    if isinstance(weight, IntxUnpackedToInt8Tensor):
        return IntxUnpackedToInt8Tensor(
            weight.qdata.index_select(0, index),
            weight.scale.index_select(0, index),
            weight.zero_point.index_select(0, index),
            weight.target_dtype,
            weight.block_size,
            weight.dtype,
            weight.activation_quantization,
        )
    return weight.detach().index_select(0, index)


def _linear_from_rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(index), bias=False, device="meta")
    out.weight = nn.Parameter(_rows(linear.weight, index), requires_grad=False)
    return out


class GatedPair(nn.Module):
    """``silu(gate(x)) * up(x)`` from a fused ``gate_up`` linear whose rows are grouped
    ``[g_0 (H) | u_0 (H) | g_1 | u_1 ...]`` in blocks of ``hidden`` (SwiGLU: one block)."""

    def __init__(self, gate_up: nn.Linear, hidden: int):
        super().__init__()
        n_rows = gate_up.out_features
        block_B2H = torch.arange(n_rows).view(-1, 2, hidden)
        self.gate = _linear_from_rows(gate_up, block_B2H[:, 0].reshape(-1))
        self.up = _linear_from_rows(gate_up, block_B2H[:, 1].reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.gate(x)) * self.up(x)


class ExportSwiGLU(nn.Module):
    def __init__(self, ffn: SwiGLU):
        super().__init__()
        self.pair = GatedPair(ffn.gate_up, ffn.hidden)
        self.down = ffn.down

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        return self.down(self.pair(x_TD))


class ExportMoE(nn.Module):
    """``MoEFeedForward`` with its routed experts as one call of the top-k kernel."""

    def __init__(self, ffn: MoEFeedForward):
        super().__init__()
        import mobilemoe_kernels.ops  # noqa: F401  (registers torch.ops.mmoe)

        from ..quant.experts import QuantizedExperts

        self.router = ffn.router  # weight (fp32) and expert_bias buffer, shared
        experts: nn.Module = ffn.experts
        if isinstance(experts, QuantizedExperts):
            self.kernel = "8da4w"
        elif isinstance(experts, RoutedExperts):
            if experts.fake_quant is not None:
                raise TypeError(
                    "export a QAT model after convert_qat (mobilemoe.quant), not with its fake quantization"
                )
            self.kernel = "f32"
        else:
            raise TypeError(f"cannot export routed experts of type {type(experts).__name__}")
        self.experts: Any = experts  # QuantizedExperts or RoutedExperts (self.kernel says which)
        self.shared = ExportSwiGLU(ffn.shared) if ffn.shared is not None else None

    def forward(self, x_TD: torch.Tensor) -> torch.Tensor:
        routing = self.router(x_TD)
        idx_TK, gate_TK = routing.topk_idx_TK, routing.topk_weight_TK
        if self.kernel == "8da4w":
            y_TD = torch.ops.mmoe.moe_ffn_8da4w(x_TD, idx_TK, gate_TK, *self.experts.packed())
        else:
            y_TD = torch.ops.mmoe.moe_ffn_f32(x_TD, idx_TK, gate_TK, self.experts.w13, self.experts.w2)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        return y_TD


def _rotate_half_matrix(head_dim: int) -> torch.Tensor:
    """R with ``F.linear(x, R) == cat(-x2, x1)`` (x = cat(x1, x2)): one +-1 per row."""
    half = head_dim // 2
    R = torch.zeros(head_dim, head_dim)
    R[torch.arange(half), torch.arange(half) + half] = -1.0
    R[torch.arange(half) + half, torch.arange(half)] = 1.0
    return R


class ExportAttention(nn.Module):
    """``Attention`` with a static KV cache of ``max_context_len`` slots (batch 1): the
    call's K/V are written at ``input_pos``, then each query attends over the slots it may
    see (``mmoe::attend_kv``), as the eager model does through its mask."""

    k_cache_T: torch.Tensor  # buffers, typed for the checker
    v_cache: torch.Tensor
    rotate_half: torch.Tensor

    def __init__(self, attn: Attention, max_context_len: int):
        super().__init__()
        import mobilemoe_kernels.ops  # noqa: F401  (registers torch.ops.mmoe)

        self.attn = attn  # its linears and norms (weights shared)
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.window = attn.window
        H, KV, hd, S = attn.n_heads, attn.n_kv_heads, attn.head_dim, max_context_len
        self.q_norm = ExportRMSNorm(attn.q_norm, (1, -1, H, hd)) if attn.q_norm is not None else None
        self.k_norm = ExportRMSNorm(attn.k_norm, (1, -1, KV, hd)) if attn.k_norm is not None else None
        self.register_buffer("k_cache_T", torch.zeros(KV, hd, S), persistent=False)
        self.register_buffer("v_cache", torch.zeros(KV, S, hd), persistent=False)
        self.register_buffer("rotate_half", _rotate_half_matrix(hd), persistent=False)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + F.linear(x, self.rotate_half) * sin

    def forward(self, x_1TD, cos_1T1d, sin_1T1d, input_pos_T) -> torch.Tensor:
        a = self.attn
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q = a.wq(x_1TD).view(1, -1, H, hd)
        k = a.wk(x_1TD).view(1, -1, KV, hd)
        v = a.wv(x_1TD).view(1, -1, KV, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self._rope(q, cos_1T1d, sin_1T1d), self._rope(k, cos_1T1d, sin_1T1d)
        self.k_cache_T.index_copy_(2, input_pos_T, k.view(-1, KV, hd).permute(1, 2, 0))
        self.v_cache.index_copy_(1, input_pos_T, v.view(-1, KV, hd).permute(1, 0, 2))
        out_THd = torch.ops.mmoe.attend_kv(
            q.view(-1, H, hd), self.k_cache_T, self.v_cache, input_pos_T, self.window or 0
        )
        return a.wo(out_THd.view(1, -1, H * hd))


class ExportableMobileMoE(nn.Module):
    """``forward(tokens [1, T], input_pos [T]) -> logits [1, T, V]`` with a static KV cache.

    As the eager model with ``input_pos``: each call writes its K/V at its positions and a
    query at position p sees slots 0..p, so a new sequence simply starts again at 0.
    """

    inv_freq: torch.Tensor  # a buffer, typed for the checker

    def __init__(self, model: MobileMoE, max_context_len: int):
        super().__init__()
        cfg = model.cfg
        D = cfg.d_model
        self.cfg, self.max_context_len = cfg, max_context_len
        self.tok_embeddings, self.output = model.tok_embeddings, model.output
        self.norm = ExportRMSNorm(model.norm, (1, -1, D))
        blocks = model.blocks()
        self.attn_norms = nn.ModuleList(ExportRMSNorm(b.attn_norm, (1, -1, D)) for b in blocks)
        self.ffn_norms = nn.ModuleList(ExportRMSNorm(b.ffn_norm, (-1, D)) for b in blocks)
        self.attns = nn.ModuleList(ExportAttention(b.attn, max_context_len) for b in blocks)
        self.ffns = nn.ModuleList(
            ExportMoE(b.ffn) if isinstance(b.ffn, MoEFeedForward) else ExportSwiGLU(cast(SwiGLU, b.ffn))
            for b in blocks
        )
        self.register_buffer("inv_freq", model.inv_freq.detach().clone(), persistent=False)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        D = self.cfg.d_model
        freqs_Td = input_pos.float().unsqueeze(1) * self.inv_freq
        hd = freqs_Td.shape[-1] * 2
        cos = torch.cat((freqs_Td.cos(), freqs_Td.cos()), dim=-1).view(1, -1, 1, hd)
        sin = torch.cat((freqs_Td.sin(), freqs_Td.sin()), dim=-1).view(1, -1, 1, hd)
        h = self.tok_embeddings(tokens)
        for attn_norm, attn, ffn_norm, ffn in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns):
            h = h + attn(attn_norm(h), cos, sin, input_pos)
            h = h + ffn(ffn_norm(h)).view(1, -1, D)
        return self.output(self.norm(h))

    def reset_cache(self) -> None:
        for attn in cast(list[ExportAttention], list(self.attns)):
            attn.k_cache_T.zero_()
            attn.v_cache.zero_()

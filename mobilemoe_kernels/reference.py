"""Pure-PyTorch reference of the MoE feed-forward kernels (the torch ops' CPU implementation).

Numerics (see ``mobilemoe_kernels.pack`` for the weight format):
* activations: per-row asymmetric INT8, exactly torchao's ``choose_qparams_affine``
  (ASYMMETRIC, int8, eps = float32 smallest normal) + ``quantize_affine`` in fp32;
* weights: symmetric INT4, group 32 along the input, float16 scales;
* SwiGLU expert: h = silu(gu[:H]) * gu[H:], y = W2 . q(h); out[t] = sum_k gates[t,k] y_k
  (k in order, starting from 0).
"""

from __future__ import annotations

import torch

from .pack import GROUP, unpack_int4

__all__ = [
    "fake_quant_act_int8_per_row",
    "fake_quant_weight_int4_g32",
    "quant_act_int8_per_row",
    "moe_ffn_8da4w_reference",
    "moe_ffn_f32_reference",
    "attend_kv_reference",
]

_EPS = torch.finfo(torch.float32).tiny


def quant_act_int8_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., C] float32 -> (q int8 [..., C], scale fp32 [..., 1], zero_point int32 [..., 1])."""
    x = x.float()
    min_neg = torch.clamp(x.amin(dim=-1, keepdim=True), max=0.0)
    max_pos = torch.clamp(x.amax(dim=-1, keepdim=True), min=0.0)
    scale = (max_pos - min_neg) / 255.0
    scale = torch.clamp(scale, min=_EPS)
    zp = torch.clamp(-128 - torch.round(min_neg / scale), -128, 127)
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, -128, 127)
    return q.to(torch.int8), scale, zp.to(torch.int32)


def _quant_dequant_act(x: torch.Tensor) -> torch.Tensor:
    q, scale, zp = quant_act_int8_per_row(x)
    return (q.to(torch.int32) - zp).to(torch.float32) * scale


def fake_quant_act_int8_per_row(x: torch.Tensor) -> torch.Tensor:
    """Per-row INT8 activation quant-dequant with a straight-through gradient."""
    fq = _quant_dequant_act(x.detach())
    if not x.requires_grad:
        return fq.to(x.dtype)
    return x + (fq.to(x.dtype) - x).detach()


def fake_quant_weight_int4_g32(w: torch.Tensor) -> torch.Tensor:
    """INT4 group-32 weight quant-dequant (``pack.quantize_int4_g32``) with a straight-through gradient."""
    from .pack import dequantize_int4_g32, quantize_int4_g32

    q, s = quantize_int4_g32(w.detach())
    fq = dequantize_int4_g32(q, s).to(w.dtype)
    if not w.requires_grad:
        return fq
    return w + (fq - w).detach()


def _check_ids(expert_ids: torch.Tensor, num_experts: int) -> None:
    if expert_ids.numel() == 0:
        return
    lo, hi = int(expert_ids.min()), int(expert_ids.max())
    if lo < 0 or hi >= num_experts:
        bad = lo if lo < 0 else hi
        raise ValueError(f"mmoe: expert id {bad} out of range [0, {num_experts})")


def _check_common(x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor) -> None:
    if x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"mmoe: x must be float32 [T, D], got {x.dtype} {tuple(x.shape)}")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0] or expert_ids.dtype != torch.int64:
        raise ValueError(
            f"mmoe: expert_ids must be int64 [T, K], got {expert_ids.dtype} {tuple(expert_ids.shape)}"
        )
    if tuple(gates.shape) != tuple(expert_ids.shape) or gates.dtype != torch.float32:
        raise ValueError(
            f"mmoe: gates must be float32 {tuple(expert_ids.shape)}, got {gates.dtype} {tuple(gates.shape)}"
        )


def _moe(x, expert_ids, gates, expert_fn) -> torch.Tensor:
    t, k = expert_ids.shape
    d = x.shape[1]
    y = torch.zeros(t, k, d, dtype=torch.float32)
    flat = expert_ids.reshape(-1)
    for e in torch.unique(flat).tolist():
        pos = (flat == e).nonzero().squeeze(1)
        tok = pos // k
        y.view(t * k, d)[pos] = expert_fn(int(e), x[tok])
    out = torch.zeros(t, d, dtype=torch.float32)
    for j in range(k):
        out = out + gates[:, j : j + 1] * y[:, j]
    return out


def moe_ffn_f32_reference(x, expert_ids, gates, w13, w2) -> torch.Tensor:
    _check_common(x, expert_ids, gates)
    e_count, h2, d = w13.shape
    h = h2 // 2
    if d != x.shape[1] or tuple(w2.shape) != (e_count, d, h):
        raise ValueError(
            f"mmoe: weight shapes w13 {tuple(w13.shape)} w2 {tuple(w2.shape)} do not fit D={x.shape[1]}"
        )
    _check_ids(expert_ids, e_count)

    def fn(e, xs):
        gu = xs @ w13[e].float().t()
        hid = torch.nn.functional.silu(gu[:, :h]) * gu[:, h:]
        return hid @ w2[e].float().t()

    return _moe(x.float(), expert_ids, gates.float(), fn)


def moe_ffn_8da4w_reference(
    x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr
) -> torch.Tensor:
    _check_common(x, expert_ids, gates)
    e_count, nb13, ng13, _ = w13_packed.shape
    h = nb13 * 16 // 2
    d = ng13 * GROUP
    if d != x.shape[1] or tuple(w2_packed.shape) != (e_count, d // 16, h // GROUP, 256):
        raise ValueError(
            f"mmoe: packed shapes w13 {tuple(w13_packed.shape)} w2 {tuple(w2_packed.shape)} "
            f"do not fit D={x.shape[1]}"
        )
    _check_ids(expert_ids, e_count)

    def fn(e, xs):
        q13, s13 = unpack_int4(w13_packed[e], w13_scales[e])
        w13 = (q13.float().reshape(2 * h, d // GROUP, GROUP) * s13.float().unsqueeze(-1)).reshape(2 * h, d)
        gu = _quant_dequant_act(xs) @ w13.t()
        hid = torch.nn.functional.silu(gu[:, :h]) * gu[:, h:]
        q2, s2 = unpack_int4(w2_packed[e], w2_scales[e])
        w2 = (q2.float().reshape(d, h // GROUP, GROUP) * s2.float().unsqueeze(-1)).reshape(d, h)
        return _quant_dequant_act(hid) @ w2.t()

    return _moe(x.float(), expert_ids, gates.float(), fn)


def _check_attend(q, k_cache_t, v_cache, input_pos, window) -> None:
    if q.dim() != 3 or q.dtype != torch.float32:
        raise ValueError(f"mmoe::attend_kv: q must be float32 [T, H, hd], got {q.dtype} {tuple(q.shape)}")
    T, H, hd = q.shape
    if k_cache_t.dim() != 3 or k_cache_t.dtype != torch.float32 or k_cache_t.shape[1] != hd:
        raise ValueError(
            f"mmoe::attend_kv: k_cache_t must be float32 [KV, {hd}, S], got {k_cache_t.dtype} "
            f"{tuple(k_cache_t.shape)}"
        )
    KV, S = k_cache_t.shape[0], k_cache_t.shape[2]
    if tuple(v_cache.shape) != (KV, S, hd) or v_cache.dtype != torch.float32:
        raise ValueError(
            f"mmoe::attend_kv: v_cache must be float32 {(KV, S, hd)}, got {v_cache.dtype} "
            f"{tuple(v_cache.shape)}"
        )
    if H % KV != 0:
        raise ValueError(f"mmoe::attend_kv: H={H} must be a multiple of KV={KV}")
    if input_pos.dim() != 1 or input_pos.shape[0] != T or input_pos.dtype != torch.int64:
        raise ValueError(
            f"mmoe::attend_kv: input_pos must be int64 [{T}], got {input_pos.dtype} {tuple(input_pos.shape)}"
        )
    if T and (int(input_pos.min()) < 0 or int(input_pos.max()) >= S):
        bad = int(input_pos.min()) if int(input_pos.min()) < 0 else int(input_pos.max())
        raise ValueError(f"mmoe::attend_kv: position {bad} out of the cache's range [0, {S})")
    if window < 0:
        raise ValueError(f"mmoe::attend_kv: window must be >= 0 (0: no window), got {window}")


def attend_kv_reference(q, k_cache_t, v_cache, input_pos, window: int) -> torch.Tensor:
    """Softmax attention of q [T, H, hd] over the cache slots each query may see.

    Query t at position p = input_pos[t], head h, reads KV head h // (H // KV) at slots
    [max(0, p - window + 1), p] (window 0: [0, p]); scores are scaled by hd^-0.5. The
    caches, K transposed [KV, hd, S] and V [KV, S, hd], already hold this call's K/V.
    Returns [T, H, hd]. Other slots are never read, so they may hold anything.
    """
    _check_attend(q, k_cache_t, v_cache, input_pos, window)
    T, H, hd = q.shape
    KV, S = k_cache_t.shape[0], k_cache_t.shape[2]
    slots_S = torch.arange(S)
    pos_T1 = input_pos.unsqueeze(1)
    seen_TS = slots_S.unsqueeze(0) <= pos_T1
    if window > 0:
        seen_TS = seen_TS & ((pos_T1 - slots_S.unsqueeze(0)) < window)
    q_TGRd = q.view(T, KV, H // KV, hd)
    scores = torch.einsum("tgrd,gds->tgrs", q_TGRd, k_cache_t) * hd**-0.5
    scores = scores.masked_fill(~seen_TS[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    v_seen = torch.where(seen_TS.any(0)[None, :, None], v_cache, 0.0)  # unread slots may hold NaN
    out = torch.einsum("tgrs,gsd->tgrd", weights, v_seen)
    return out.reshape(T, H, hd).contiguous()

"""INT4 group-32 weight quantization and the "R16K4" packed layout of the MoE kernel.

Weight quantization (``quantize_int4_g32``): symmetric INT4, q in [-8, 7], one scale per
group of 32 consecutive input columns. Per group: ``amax = max|w|`` in fp32,
``scale = amax / 7.5`` in fp32 (torchao's symmetric int4 choice: (max - min) / 15 with
max = -min = amax), rounded to float16 and clamped to >= 2**-14 (the smallest fp16
normal; an all-zero group gets that scale and q = 0). ``q = clamp(round(w / float(s16)),
-8, 7)`` with round-half-to-even. The dequantized weight is ``q * float(s16)``.

Packed layout "R16K4" of a weight matrix W [N, Kin] (N output rows, Kin inputs; N % 16 ==
0, Kin % 32 == 0), per expert:

* ``packed``: uint8 [N/16, Kin/32, 256]. For row block rb, group g, byte
  ``i = s*64 + r*4 + j`` (s in 0..3, r in 0..15, j in 0..3):
  low nibble  = q[rb*16 + r, g*32 + s*4 + j],
  high nibble = q[rb*16 + r, g*32 + (s+4)*4 + j];
  a nibble is the 4-bit two's complement ``q & 0xF``. (So each 64-byte chunk s holds, for
  16 rows, 4 consecutive columns in the low nibbles and the 4 columns 16 further on in the
  high nibbles: one 512-bit ``dpbusd`` per nibble half, or two 256-bit halves of 8 rows.)
* ``scales``: float16 [N/16, Kin/32, 16], ``scales[rb, g, r] = s[rb*16 + r, g]``.
* ``corr``: float32 [N], ``corr[n] = sum_g float(s[n, g]) * sum_{c in group g} q[n, c]``
  (the kernel computes ``sum_c q_w (q_a - zp) = dot(q_w, q_a) - zp * sum_c q_w``).

Stacked over E experts: w13 [E, 2H/16, D/32, 256] / [E, 2H/16, D/32, 16] / [E, 2H],
w2 [E, D/16, H/32, 256] / [E, D/16, H/32, 16] / [E, D].
"""

from __future__ import annotations

import torch

GROUP = 32
ROWS = 16
FP16_MIN_NORMAL = 2.0**-14

__all__ = ["quantize_int4_g32", "pack_int4", "unpack_int4", "pack_experts", "dequantize_int4_g32"]


def _check_width(name: str, value: int, multiple: int) -> None:
    if value % multiple != 0:
        raise ValueError(f"{name}={value} must be a multiple of {multiple} for the INT4 group-32 kernel")


def quantize_int4_g32(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, Kin] float -> (q int8 [..., N, Kin] in [-8, 7], s float16 [..., N, Kin/32])."""
    kin = w.shape[-1]
    _check_width("input width (Kin)", kin, GROUP)
    wg = w.detach().float().reshape(*w.shape[:-1], kin // GROUP, GROUP)
    amax = wg.abs().amax(dim=-1)
    s16 = (amax / 7.5).to(torch.float16).clamp_min(FP16_MIN_NORMAL)
    q = torch.clamp(torch.round(wg / s16.float().unsqueeze(-1)), -8, 7).to(torch.int8)
    return q.reshape(w.shape), s16


def dequantize_int4_g32(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(q [..., N, Kin], s [..., N, Kin/32]) -> float32 [..., N, Kin]."""
    kin = q.shape[-1]
    return (q.float().reshape(*q.shape[:-1], kin // GROUP, GROUP) * s.float().unsqueeze(-1)).reshape(q.shape)


def pack_int4(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int8 [..., N, Kin], s fp16 [..., N, Kin/32]) -> (packed, scales, corr); see module doc."""
    *lead, n, kin = q.shape
    _check_width("output rows (N)", n, ROWS)
    _check_width("input width (Kin)", kin, GROUP)
    if tuple(s.shape) != (*lead, n, kin // GROUP):
        raise ValueError(f"scales shape {tuple(s.shape)} != {(*lead, n, kin // GROUP)}")
    if int(q.min()) < -8 or int(q.max()) > 7:
        raise ValueError("q must lie in [-8, 7]")
    nib = (q.to(torch.int16) & 0xF).to(torch.uint8)
    # [..., N/16, r, G, s8, j] with column = g*32 + s8*4 + j
    t = nib.reshape(*lead, n // ROWS, ROWS, kin // GROUP, 8, 4)
    lo, hi = t[..., :4, :], t[..., 4:, :]  # s in 0..3 and s+4
    byte = lo | (hi << 4)  # [..., rb, r, g, s, j]
    nd = len(lead)
    perm = list(range(nd)) + [nd + 0, nd + 2, nd + 3, nd + 1, nd + 4]  # rb, g, s, r, j
    packed = byte.permute(*perm).reshape(*lead, n // ROWS, kin // GROUP, 256).contiguous()
    s16 = s.to(torch.float16)
    scales = s16.reshape(*lead, n // ROWS, ROWS, kin // GROUP).transpose(-1, -2).contiguous()
    corr = (s16.float() * q.float().reshape(*lead, n, kin // GROUP, GROUP).sum(-1)).sum(-1).contiguous()
    return packed, scales, corr


def unpack_int4(packed: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of ``pack_int4`` (without corr): -> (q int8 [..., N, Kin], s fp16 [..., N, Kin/32])."""
    *lead, nb, ng, nbytes = packed.shape
    if nbytes != 256:
        raise ValueError(f"packed last dim must be 256, got {nbytes}")
    b = packed.to(torch.int16).reshape(*lead, nb, ng, 4, ROWS, 4)  # rb, g, s, r, j
    lo = b & 0xF
    hi = (b >> 4) & 0xF
    vals = torch.cat([lo, hi], dim=-3)  # rb, g, s8, r, j
    vals = torch.where(vals >= 8, vals - 16, vals).to(torch.int8)
    nd = len(lead)
    perm = list(range(nd)) + [nd + 0, nd + 3, nd + 1, nd + 2, nd + 4]  # rb, r, g, s8, j
    q = vals.permute(*perm).reshape(*lead, nb * ROWS, ng * GROUP).contiguous()
    s = scales.transpose(-1, -2).reshape(*lead, nb * ROWS, ng).contiguous()
    return q, s


def pack_experts(
    w13_q: torch.Tensor, w13_s: torch.Tensor, w2_q: torch.Tensor, w2_s: torch.Tensor
) -> dict[str, torch.Tensor]:
    """w13_q [E, 2H, D] int8, w13_s [E, 2H, D/32], w2_q [E, D, H], w2_s [E, D, H/32]
    -> the six kernel tensors."""
    if w13_q.dim() != 3 or w2_q.dim() != 3:
        raise ValueError("w13_q and w2_q must be [E, N, Kin]")
    e, h2, d = w13_q.shape
    if h2 % 2:
        raise ValueError(f"w13 rows (2H={h2}) must be even")
    h = h2 // 2
    _check_width("D", d, GROUP)
    _check_width("H", h, GROUP)
    if tuple(w2_q.shape) != (e, d, h):
        raise ValueError(f"w2_q shape {tuple(w2_q.shape)} != {(e, d, h)}")
    p13, s13, c13 = pack_int4(w13_q, w13_s)
    p2, s2, c2 = pack_int4(w2_q, w2_s)
    return {
        "w13_packed": p13,
        "w13_scales": s13,
        "w13_corr": c13,
        "w2_packed": p2,
        "w2_scales": s2,
        "w2_corr": c2,
    }

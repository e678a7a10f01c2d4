"""torch ops ``mmoe::moe_ffn_8da4w``, ``mmoe::moe_ffn_f32`` and ``mmoe::attend_kv`` (functional + ``.out``).

CPU implementation: the pure-torch reference (``reference.py``); Meta: shapes only.
Importing this module registers them (idempotent). The ExecuTorch kernels of the same
``.out`` schemas live in the compiled library (``mobilemoe_kernels.load()``).
"""

from __future__ import annotations

import torch

from .reference import attend_kv_reference, moe_ffn_8da4w_reference, moe_ffn_f32_reference

__all__ = ["moe_ffn_8da4w", "moe_ffn_f32", "attend_kv"]

_ARGS_8DA4W = (
    "Tensor x, Tensor expert_ids, Tensor gates, Tensor w13_packed, Tensor w13_scales, Tensor w13_corr, "
    "Tensor w2_packed, Tensor w2_scales, Tensor w2_corr"
)
_ARGS_F32 = "Tensor x, Tensor expert_ids, Tensor gates, Tensor w13, Tensor w2"
_ARGS_ATTEND = "Tensor q, Tensor k_cache_t, Tensor v_cache, Tensor input_pos, int window"


def _defined() -> bool:
    try:
        torch.ops.mmoe.moe_ffn_8da4w.default  # noqa: B018
        torch.ops.mmoe.attend_kv.default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


if not _defined():
    _lib = torch.library.Library("mmoe", "DEF")
    _lib.define(f"moe_ffn_8da4w({_ARGS_8DA4W}) -> Tensor")
    _lib.define(f"moe_ffn_8da4w.out({_ARGS_8DA4W}, *, Tensor(a!) out) -> Tensor(a!)")
    _lib.define(f"moe_ffn_f32({_ARGS_F32}) -> Tensor")
    _lib.define(f"moe_ffn_f32.out({_ARGS_F32}, *, Tensor(a!) out) -> Tensor(a!)")

    def _8da4w_cpu(x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr):
        return moe_ffn_8da4w_reference(
            x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr
        )

    def _8da4w_out_cpu(
        x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr, *, out
    ):
        y = _8da4w_cpu(x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr)
        out.resize_(y.shape).copy_(y)
        return out

    def _8da4w_meta(x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr):
        return x.new_empty(x.shape, dtype=torch.float32)

    def _8da4w_out_meta(
        x, expert_ids, gates, w13_packed, w13_scales, w13_corr, w2_packed, w2_scales, w2_corr, *, out
    ):
        return out

    def _f32_cpu(x, expert_ids, gates, w13, w2):
        return moe_ffn_f32_reference(x, expert_ids, gates, w13, w2)

    def _f32_out_cpu(x, expert_ids, gates, w13, w2, *, out):
        y = _f32_cpu(x, expert_ids, gates, w13, w2)
        out.resize_(y.shape).copy_(y)
        return out

    def _f32_meta(x, expert_ids, gates, w13, w2):
        return x.new_empty(x.shape, dtype=torch.float32)

    def _f32_out_meta(x, expert_ids, gates, w13, w2, *, out):
        return out

    _lib.define(f"attend_kv({_ARGS_ATTEND}) -> Tensor")
    _lib.define(f"attend_kv.out({_ARGS_ATTEND}, *, Tensor(a!) out) -> Tensor(a!)")

    def _attend_cpu(q, k_cache_t, v_cache, input_pos, window):
        return attend_kv_reference(q, k_cache_t, v_cache, input_pos, window)

    def _attend_out_cpu(q, k_cache_t, v_cache, input_pos, window, *, out):
        y = _attend_cpu(q, k_cache_t, v_cache, input_pos, window)
        out.resize_(y.shape).copy_(y)
        return out

    def _attend_meta(q, k_cache_t, v_cache, input_pos, window):
        return q.new_empty(q.shape, dtype=torch.float32)

    def _attend_out_meta(q, k_cache_t, v_cache, input_pos, window, *, out):
        return out

    _lib.impl("attend_kv", _attend_cpu, "CPU")
    _lib.impl("attend_kv.out", _attend_out_cpu, "CPU")
    _lib.impl("attend_kv", _attend_meta, "Meta")
    _lib.impl("attend_kv.out", _attend_out_meta, "Meta")
    _lib.impl("moe_ffn_8da4w", _8da4w_cpu, "CPU")
    _lib.impl("moe_ffn_8da4w.out", _8da4w_out_cpu, "CPU")
    _lib.impl("moe_ffn_8da4w", _8da4w_meta, "Meta")
    _lib.impl("moe_ffn_8da4w.out", _8da4w_out_meta, "Meta")
    _lib.impl("moe_ffn_f32", _f32_cpu, "CPU")
    _lib.impl("moe_ffn_f32.out", _f32_out_cpu, "CPU")
    _lib.impl("moe_ffn_f32", _f32_meta, "Meta")
    _lib.impl("moe_ffn_f32.out", _f32_out_meta, "Meta")

moe_ffn_8da4w = torch.ops.mmoe.moe_ffn_8da4w
moe_ffn_f32 = torch.ops.mmoe.moe_ffn_f32
attend_kv = torch.ops.mmoe.attend_kv

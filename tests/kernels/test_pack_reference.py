"""Packing, quantization formula and activation fake-quant vs torchao (pure torch, fast)."""

from __future__ import annotations

import pytest
import torch

from mobilemoe_kernels.pack import (
    FP16_MIN_NORMAL,
    dequantize_int4_g32,
    pack_experts,
    pack_int4,
    quantize_int4_g32,
    unpack_int4,
)
from mobilemoe_kernels.reference import (
    _quant_dequant_act,
    fake_quant_act_int8_per_row,
    fake_quant_weight_int4_g32,
)


def test_pack_unpack_round_trip():
    torch.manual_seed(0)
    w = torch.randn(3, 48, 96)
    q, s = quantize_int4_g32(w)
    packed, scales, corr = pack_int4(q, s)
    assert packed.shape == (3, 3, 3, 256) and packed.dtype == torch.uint8
    assert scales.shape == (3, 3, 3, 16) and scales.dtype == torch.float16
    assert corr.shape == (3, 48) and corr.dtype == torch.float32
    q2, s2 = unpack_int4(packed, scales)
    assert torch.equal(q, q2) and torch.equal(s, s2)
    ref_corr = (s.float() * q.float().reshape(3, 48, 3, 32).sum(-1)).sum(-1)
    assert torch.equal(corr, ref_corr)


def test_pack_layout_bytes():
    q = torch.randint(-8, 8, (16, 32), dtype=torch.int8)
    s = torch.ones(16, 1, dtype=torch.float16)
    packed, scales, _ = pack_int4(q, s)
    for sidx in range(4):
        for r in range(16):
            for j in range(4):
                b = int(packed[0, 0, sidx * 64 + r * 4 + j])
                assert b & 0xF == int(q[r, sidx * 4 + j]) & 0xF
                assert b >> 4 == int(q[r, (sidx + 4) * 4 + j]) & 0xF


def test_quantize_formula():
    torch.manual_seed(1)
    w = torch.randn(32, 64) * 0.05
    w[0] = 0.0
    q, s = quantize_int4_g32(w)
    wg = w.reshape(32, 2, 32)
    s_ref = (wg.abs().amax(-1) / 7.5).to(torch.float16).clamp_min(FP16_MIN_NORMAL)
    assert torch.equal(s, s_ref)
    q_ref = torch.clamp(torch.round(wg / s_ref.float().unsqueeze(-1)), -8, 7).to(torch.int8).reshape(32, 64)
    assert torch.equal(q, q_ref)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    assert torch.equal(q[0], torch.zeros(64, dtype=torch.int8))
    assert torch.equal(fake_quant_weight_int4_g32(w), dequantize_int4_g32(q, s))


def test_widths_rejected():
    with pytest.raises(ValueError, match="Kin"):
        quantize_int4_g32(torch.randn(16, 40))
    with pytest.raises(ValueError, match="N"):
        pack_int4(torch.zeros(8, 32, dtype=torch.int8), torch.ones(8, 1, dtype=torch.float16))
    q = torch.zeros(1, 2 * 48, 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="H"):
        pack_experts(
            q,
            torch.ones(1, 96, 2, dtype=torch.float16),
            torch.zeros(1, 64, 48, dtype=torch.int8),
            torch.ones(1, 64, 1, dtype=torch.float16),
        )


def _rows():
    torch.manual_seed(2)
    x = torch.randn(64, 96) * torch.logspace(-3, 2, 64).unsqueeze(1)
    x[0] = x[0].abs()
    x[1] = -x[1].abs()
    x[2] = 0.0
    x[3] = 1.7
    x[4] = -2.2
    x[5] = 1e-30
    return x


def test_act_fake_quant_matches_torchao():
    ao = pytest.importorskip("torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor")
    x = _rows()
    assert torch.equal(_quant_dequant_act(x), ao._apply_int8_act_asym_per_token_quant_dequant(x))
    assert torch.equal(fake_quant_act_int8_per_row(x), _quant_dequant_act(x))


def test_act_fake_quant_straight_through():
    x = _rows().requires_grad_(True)
    y = fake_quant_act_int8_per_row(x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    w = torch.randn(16, 32, requires_grad=True)
    fake_quant_weight_int4_g32(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))

"""The export form of the model computes what the eager model computes (before any lowering):
MobileMoE's sigmoid router, OLMoE's softmax router without shared experts, dense layers with
sliding-window attention, GQA and MHA, float and converted INT4; prefill then decode with
the static KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

from mobilemoe.config import load_preset
from mobilemoe.export.modules import ExportableMobileMoE
from mobilemoe.model import build_model
from mobilemoe.quant import convert_qat

VARIANTS = {
    "mobilemoe": [],
    "olmoe-like": [
        "model.moe.router=softmax",
        "model.moe.n_shared_experts=0",
        "model.moe.bias_update_rate=0.0",
        "model.moe.renormalize=false",
        "model.n_kv_heads=2",
    ],
    "dense+window": [
        "model.sliding_window=6",
        "model.global_every=2",
        "model.n_layers=3",
        "model.moe.n_dense_layers=1",
        "model.n_heads=4",
        "model.n_kv_heads=1",
        "model.head_dim=16",
    ],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("quantized", [False, True])
def test_export_form_equals_the_eager_model(variant, quantized):
    params = load_preset("smoke", VARIANTS[variant] + ["model.init_std=0.2"])
    torch.manual_seed(0)
    model = build_model(params.model).eval()
    for r in model.routers():  # a non-zero balancing bias must only change the picks
        r.expert_bias.copy_(torch.linspace(-0.05, 0.05, r.n_experts))
    model = convert_qat(model, params.qat) if quantized else model
    program_model = ExportableMobileMoE(copy.deepcopy(model), 40).eval()
    model.setup_cache(1, 40)
    tokens = torch.randint(0, params.model.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for start, end in ((0, 17), (17, 18), (18, 19), (19, 24)):  # prefill, decode, chunk
            pos = torch.arange(start, end)
            want = model(tokens[:, start:end], input_pos=pos)
            got = program_model(tokens[:, start:end], pos)
            assert got.shape == want.shape
            # fp32: summation order only. INT4: identical quantized values; a float rounding
            # difference can flip one INT8 activation step now and then.
            assert (got - want).abs().max() <= (1e-4 if quantized else 1e-5), (start, end)
        # A new sequence simply starts again at position 0 (stale slots are masked).
        pos = torch.arange(0, 5)
        model.reset_cache()
        assert (
            program_model(tokens[:, 5:10], pos) - model(tokens[:, 5:10], input_pos=pos)
        ).abs().max() <= 1e-4

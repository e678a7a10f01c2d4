"""Shapes from scaling coordinates: exact counts, MobileMoE-S reproduced, bad shapes named."""

from __future__ import annotations

import dataclasses

import pytest

from mobilemoe.config import ConfigError, load_preset
from mobilemoe.model.accounting import account, decode_bytes, kv_read_bytes
from mobilemoe.scaling.counts import count_model
from mobilemoe.scaling.shapes import FFN_MULT, coordinates, make_model


def _variants():
    tiny = load_preset("tiny").model
    yield tiny
    yield dataclasses.replace(tiny, moe=None, ffn_hidden=384)
    yield dataclasses.replace(tiny, sliding_window=16, global_every=2, tie_embeddings=False, qk_norm=False)
    yield dataclasses.replace(tiny, moe=dataclasses.replace(tiny.moe, n_dense_layers=1, n_shared_experts=0))
    yield load_preset("mobilemoe-s").model


@pytest.mark.parametrize("cfg", list(_variants()), ids=["tiny", "dense", "window-untied", "dense-first", "S"])
def test_closed_form_counts_equal_the_models_own(cfg):
    acc = account(cfg, 64)
    c = count_model(cfg, 64, kv_position=40)
    assert {k: c[k] for k in ("total_params", "active_params", "flops_per_token", "int4_weight_bytes")} == {
        k: getattr(acc, k) for k in ("total_params", "active_params", "flops_per_token", "int4_weight_bytes")
    }
    assert c["decode_weight_bytes"] == decode_bytes(cfg, 1).active_weight_bytes
    assert c["decode_kv_bytes"] == kv_read_bytes(cfg, 40)


def test_mobilemoe_s_is_sparsity_8_granularity_8_half_shared():
    s = load_preset("mobilemoe-s").model
    c = coordinates(s)
    assert (c["sparsity"], c["granularity"], c["shared_fraction"]) == (8.0, 8.0, 0.5)
    made = make_model(
        s, active_params=c["active_params"], sparsity=8, granularity=8, shared_fraction=0.5, name=s.name
    )
    assert made == s  # 60 routed of 384, top-4, one shared of 1536, d 768, 20 layers, 12/4 heads


@pytest.mark.parametrize(
    "S,G,f", [(1, 1, 0.0), (2, 2, 0.5), (4, 4, 0.25), (8, 8, 0.5), (16, 8, 0.25), (4, 1, 0.0), (1.5, 2, 0.0)]
)
def test_make_model_hits_the_coordinates(S, G, f):
    base = load_preset("tiny").model
    cfg = make_model(base, active_params=500_000, sparsity=S, granularity=G, shared_fraction=f)
    c = coordinates(cfg)
    assert (c["sparsity"], c["granularity"], c["shared_fraction"]) == (float(S), float(G), f)
    assert 0.8 < c["active_params"] / 500_000 < 1.25
    assert cfg.vocab_size == base.vocab_size and cfg.resolved_head_dim == base.resolved_head_dim
    if S == 1:
        assert cfg.moe is None and cfg.ffn_hidden == FFN_MULT * cfg.d_model
    else:
        assert cfg.moe.expert_hidden % 32 == 0 and cfg.moe.expert_hidden * G == FFN_MULT * cfg.d_model
        assert cfg.moe.route_scale == base.moe.route_scale and cfg.moe.router == base.moe.router
    assert cfg.n_heads % cfg.n_kv_heads == 0


def test_fixed_depth_and_a_model_that_runs():
    import torch

    from mobilemoe.model import build_model

    cfg = make_model(
        load_preset("tiny").model,
        active_params=150_000,
        sparsity=4,
        granularity=4,
        shared_fraction=0.25,
        n_layers=2,
    )
    assert cfg.n_layers == 2
    logits = build_model(cfg)(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape[-1] == cfg.vocab_size


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(sparsity=4, granularity=2.5, shared_fraction=0.0), "scaling.sweep.granularity"),
        (dict(sparsity=4, granularity=1, shared_fraction=0.25), "scaling.sweep.shared_fraction"),
        (dict(sparsity=4, granularity=2, shared_fraction=0.99), "scaling.sweep.shared_fraction"),
        (dict(sparsity=1.3, granularity=1, shared_fraction=0.0), "scaling.sweep.sparsity"),
        (dict(sparsity=0.5, granularity=1, shared_fraction=0.0), "scaling.sweep.sparsity"),
    ],
)
def test_impossible_shapes_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_model(load_preset("tiny").model, active_params=400_000, **kwargs)


def test_unreachable_size_names_the_nearest():
    with pytest.raises(ConfigError, match=r"scaling\.sweep\.active_params: 20,000 .* nearest shape has"):
        make_model(
            load_preset("tiny").model, active_params=20_000, sparsity=8, granularity=8, shared_fraction=0.5
        )

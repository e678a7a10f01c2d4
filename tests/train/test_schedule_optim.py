"""LR schedules (values at the points users rely on) and AdamW's no-decay groups."""

from __future__ import annotations

import math

import pytest

from mobilemoe.config.train import TrainStageConfig
from mobilemoe.train.optim import param_groups
from mobilemoe.train.schedule import lr_at


def cfg(**kw) -> TrainStageConfig:
    base = dict(steps=100, lr=1.0, min_lr_ratio=0.1, warmup_steps=10, decay_fraction=0.2)
    base.update(kw)
    return TrainStageConfig(**base)


def test_warmup_is_linear_to_the_peak():
    c = cfg(schedule="cosine")
    assert [lr_at(s, c) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, c) == pytest.approx(1.0)  # first post-warmup update: the peak


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "linear"])
def test_schedules_end_at_min_lr_ratio(schedule):
    c = cfg(schedule=schedule)
    lrs = [lr_at(s, c) for s in range(c.steps)]
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warmup
    # The last update is one step short of the end: within one step's decrement of the floor.
    assert 0.1 <= lrs[-1] <= 0.1 + 0.9 / 20 + 1e-9
    assert lr_at(c.steps, c) == pytest.approx(0.1)  # the schedule's value at the end


def test_cosine_midpoint_and_linear_anneal_to_zero():
    c = cfg(schedule="cosine")
    mid = 10 + 45
    assert lr_at(mid, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = cfg(schedule="linear", min_lr_ratio=0.0, warmup_steps=0)
    assert lr_at(50, lin) == pytest.approx(0.5)
    assert lr_at(100, lin) == 0.0


def test_wsd_is_stable_then_decays_over_the_last_fraction():
    c = cfg(schedule="wsd")
    assert all(lr_at(s, c) == 1.0 for s in range(10, 80))  # decay_fraction 0.2 of 100 steps
    assert lr_at(90, c) == pytest.approx(1.0 - 0.9 * 0.5)


def test_constant_ignores_min_lr():
    c = cfg(schedule="constant")
    assert lr_at(99, c) == 1.0


def test_no_decay_groups_hold_norms_biases_and_the_embedding():
    import torch

    from mobilemoe.config.model import ModelConfig, MoEConfig
    from mobilemoe.model import build_model

    m = build_model(
        ModelConfig(
            vocab_size=300,
            d_model=32,
            n_layers=2,
            n_heads=2,
            n_kv_heads=1,
            max_seq_len=16,
            moe=MoEConfig(n_routed_experts=4, expert_hidden=16, shared_hidden=32),
        )
    )
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "tok_embeddings.weight" in no_decay["names"]
    assert "output.weight" not in decay["names"] + no_decay["names"]  # tied: counted once
    assert all("norm" in n for n in no_decay["names"] if n != "tok_embeddings.weight")
    assert {"layers.0.ffn.experts.w13", "layers.0.ffn.router.weight", "layers.1.attn.wq.weight"} <= set(
        decay["names"]
    )
    # Every trainable tensor is in exactly one group.
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(set(ids)) == len(ids)
    assert isinstance(no_decay["params"][0], torch.nn.Parameter)

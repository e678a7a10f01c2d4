"""The sweep's ladder (``scaling.sweep`` -> points): shapes, training rules, keys, bad specs."""

from __future__ import annotations

import pytest

from mobilemoe.config import ConfigError, load_preset
from mobilemoe.pipeline.cache import stage_key
from mobilemoe.scaling.sweep import groups, plan, point_params

TRAIN_TOKENS = 468_583  # the default data's pretraining split


def _points(overrides=(), tokens=TRAIN_TOKENS, preset="tiny"):
    return plan(load_preset(preset, list(overrides)), tokens)


def test_the_tiny_ladder_has_every_size_and_architecture_with_the_stated_rules():
    params = load_preset("tiny")
    sweep = params.scaling.sweep
    points = _points()
    assert len(points) == len(sweep.active_params) * len(sweep.architectures) >= 16
    for p in points:
        c = p.coordinates
        assert abs(c["active_params"] / p.target_active_params - 1) < 0.25  # snapped near the size
        assert c["sparsity"] == pytest.approx(p.sparsity) and c["shared_fraction"] == pytest.approx(
            p.shared_fraction
        )
        if p.sparsity > 1:
            assert c["granularity"] == pytest.approx(p.granularity)
        # the rules: tokens from the ladder size, capped at max_epochs; LR by the width rule
        want = min(int(sweep.tokens_per_param * p.target_active_params), int(sweep.max_epochs * TRAIN_TOKENS))
        assert p.tokens <= want and p.tokens > want - p.train["batch_size"] * sweep.seq_len
        assert p.train["steps"] >= sweep.min_steps
        width_rule = (sweep.lr_reference_width / p.model["d_model"]) ** sweep.lr_width_exponent
        assert p.train["lr"] == pytest.approx(sweep.lr * width_rule)
        assert p.tokens == p.train["steps"] * p.train["batch_size"] * p.train["seq_len"]
    # every architecture of one size trains on the same tokens with the same batch
    by_size: dict[int, set] = {}
    for p in points:
        by_size.setdefault(p.target_active_params, set()).add((p.tokens, p.train["batch_size"]))
    assert all(len(v) == 1 for v in by_size.values())
    # MobileMoE's kind of point: top-2 of 14 routed slots plus a 2-slot shared expert
    fine = next(p for p in points if p.name.endswith("-s4-g4-f0.5"))
    moe = fine.model["moe"]
    assert (moe["n_routed_experts"], moe["top_k"], moe["shared_hidden"] // moe["expert_hidden"]) == (14, 2, 2)
    dense = next(p for p in points if p.name.endswith("-dense"))
    assert dense.model["moe"] is None


def test_adding_a_size_keeps_every_other_points_key():
    def keys(overrides):
        params = load_preset("tiny", overrides)
        return {
            p.name: stage_key("pretrain", point_params(params, p), None, {"d": "1"}, "code")
            for p in plan(params, TRAIN_TOKENS)
        }

    base = keys([])
    more = keys(["scaling.sweep.active_params=[30000,120000,185000,240000,270000]"])
    assert set(base) < set(more)
    assert {n: more[n] for n in base} == base


def test_groups_hold_every_point_once_and_balance_the_work():
    points = _points()
    parts = groups(points, 5)
    assert len(parts) == 4
    assert sorted(p.name for g in parts for p in g) == sorted(p.name for p in points)
    work = [sum(p.tokens * p.model["d_model"] for p in g) for g in parts]
    assert max(work) < 1.6 * min(work)
    assert groups([], 4) == []


def test_the_width_rule_scales_the_learning_rate():
    points = _points(["scaling.sweep.lr_width_exponent=1.0"])
    lr = {p.model["d_model"]: p.train["lr"] for p in points}
    assert lr[64] == pytest.approx(0.006) and lr[32] == pytest.approx(0.012)


def test_smoke_has_four_points():
    assert len(_points(preset="smoke", tokens=20_000)) == 4


@pytest.mark.parametrize(
    "override, key",
    [
        (
            "scaling.sweep.architectures=[{sparsity: 3, granularity: 4, shared_fraction: 0.3}]",
            "shared_fraction",
        ),
        ("scaling.sweep.architectures=[{sparsity: 2.5, granularity: 1, shared_fraction: 0.0}]", "sparsity"),
        ("scaling.sweep.architectures=[{sparsity: 4, granularity: 0, shared_fraction: 0.5}]", "granularity"),
        (
            "scaling.sweep.architectures=[{sparsity: 4, granularity: 4, shared_fraction: 1.0}]",
            "shared_fraction",
        ),
        ("scaling.sweep.active_params=[10]", "active_params"),
        ("scaling.sweep.seq_len=4096", "seq_len"),
    ],
)
def test_an_impossible_shape_names_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"scaling\.sweep.*{key}"):
        _points([override])


def test_too_little_data_for_min_steps_names_max_epochs():
    with pytest.raises(ConfigError, match=r"scaling\.sweep\.max_epochs"):
        _points(tokens=100)


def test_a_repeated_architecture_is_refused():
    arch = "{sparsity: 4, granularity: 4, shared_fraction: 0.5}"
    with pytest.raises(ConfigError, match=r"scaling\.sweep\.architectures\[1\]"):
        load_preset("tiny", [f"scaling.sweep.architectures=[{arch}, {arch}]"])

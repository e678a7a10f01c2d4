"""Mid-training anneals from where pretraining ended (docs/paper.md#training-recipe).

A midtrain LR above pretrain's final LR re-warms the model and undoes pretrain's anneal:
on the tiny default (lr 0.001 after pretrain ended at 0.0003) validation loss went
4.639 -> 4.685 -> 4.638 over the stage instead of falling."""

from __future__ import annotations

import pytest

from mobilemoe.config import load_preset, preset_names
from mobilemoe.train.schedule import lr_at

# smoke is a test fixture: its 8-step pretrain leaves nothing to anneal
RECIPES = [n for n in preset_names() if n != "smoke"]


@pytest.mark.parametrize("name", RECIPES)
def test_midtrain_starts_at_pretrains_final_lr_and_anneals_to_zero(name):
    p = load_preset(name)
    pre_final = lr_at(p.pretrain.steps - 1, p.pretrain)
    first, last = lr_at(0, p.midtrain), lr_at(p.midtrain.steps - 1, p.midtrain)
    pre_end = p.pretrain.lr * (1 if p.pretrain.schedule == "constant" else p.pretrain.min_lr_ratio)
    assert first == pytest.approx(pre_end, rel=1e-6), name  # no re-warm, no drop
    assert first <= pre_final * 1.5  # within one decay step of pretrain's last update
    assert p.midtrain.min_lr_ratio == 0 and last < 0.05 * first  # anneals to zero
    lrs = [lr_at(s, p.midtrain) for s in range(0, p.midtrain.steps, max(1, p.midtrain.steps // 50))]
    assert lrs == sorted(lrs, reverse=True)  # only ever down

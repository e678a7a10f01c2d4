"""The science check: a dense model with the MoE's active parameters, same batches."""

from __future__ import annotations

import pytest
from train_helpers import PRETRAIN, smoke_params

from mobilemoe.checkpoint import read_config
from mobilemoe.errors import UserError
from mobilemoe.model.accounting import account
from mobilemoe.train.dense import compare_with_dense, dense_counterpart


def test_dense_counterpart_has_the_same_active_parameters():
    for preset in ("smoke", "tiny", "mobilemoe-s"):
        cfg = smoke_params(preset=preset).model
        dense = dense_counterpart(cfg)
        a, b = account(cfg, 128), account(dense, 128)
        router = cfg.d_model * cfg.moe.n_routed_experts * (cfg.n_layers - cfg.moe.n_dense_layers)
        assert a.active_params - b.active_params == router  # only the router differs
        assert b.total_params == b.active_params and dense.moe is None
    with pytest.raises(UserError, match="already dense"):
        dense_counterpart(dense)


def test_compare_with_dense_trains_on_the_same_batches(pretrained, data_root, tmp_path):
    cmp = compare_with_dense(smoke_params(*PRETRAIN), data_root, tmp_path, moe_result=pretrained)
    d = cmp.to_dict()
    assert d["tokens"] == pretrained.state["tokens"]
    assert d["moe"]["val_loss"] == pretrained.val_curve[-1][1]
    assert d["dense"]["val_loss"] < d["dense"]["first_val_loss"]  # it trained
    assert d["val_loss_delta"] == pytest.approx(d["moe"]["val_loss"] - d["dense"]["val_loss"])
    assert read_config(d["dense"]["checkpoint"])["model"]["moe"] is None
    # Same seed and stage: the dense run drew exactly the MoE run's windows.
    assert read_config(d["dense"]["checkpoint"])["data"] == read_config(pretrained.checkpoint)["data"]

"""DDP under torchrun (gloo, 2 CPU processes) takes the same steps as 1 process with the
same global batch, also when an expert gets no tokens and with OLMoE's auxiliary losses."""

from __future__ import annotations

import numpy as np
import torch
from train_helpers import smoke_params

from mobilemoe.checkpoint import load_checkpoint, save_checkpoint
from mobilemoe.config.model import MoEConfig
from mobilemoe.model.moe import MoEFeedForward
from mobilemoe.train import run_stage

TOL = 1e-5


def _curves_match(a, b) -> None:
    ta, tb = np.array(a.train_curve), np.array(b.train_curve)
    va, vb = np.array(a.val_curve), np.array(b.val_curve)
    assert ta.shape == tb.shape and va.shape == vb.shape
    assert np.array_equal(ta[:, 0], tb[:, 0])
    assert np.abs(ta[:, 1] - tb[:, 1]).max() < TOL
    assert np.abs(va[:, 1] - vb[:, 1]).max() < TOL


def test_an_expert_without_tokens_still_gets_a_gradient():
    # Why DDP needs no find_unused_parameters: the stacked expert weights always receive a
    # gradient (zeros in the idle expert's slice), so every parameter is "used".
    torch.manual_seed(0)
    moe = MoEFeedForward(16, MoEConfig(n_routed_experts=4, expert_hidden=8, top_k=1, n_shared_experts=0))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    moe.router.expert_bias[2] = -1e4  # expert 2 is never picked
    moe(torch.randn(32, 16)).pow(2).sum().backward()
    assert moe.router.last_load[2] == 0
    for w in (moe.experts.w13, moe.experts.w2):
        assert w.grad is not None and torch.all(w.grad[2] == 0) and w.grad[0].abs().sum() > 0


def test_two_processes_match_one_with_an_idle_expert(pretrained, data_root, tmp_path):
    model, cfg = load_checkpoint(pretrained.checkpoint)
    with torch.no_grad():
        model.layers[0].ffn.router.expert_bias[0] = -1e4  # expert 0 of layer 0 gets no tokens
    init = tmp_path / "init"
    save_checkpoint(init, model, {"stage": "pretrain"}, tokenizer=pretrained.checkpoint / "tokenizer.json")

    over = [
        "midtrain.steps=4",
        "midtrain.log_every=1",
        "midtrain.eval_every=2",
        "midtrain.checkpoint_every=2",
        "midtrain.batch_size=8",
        "runtime.threads=2",
    ]
    one = run_stage(
        smoke_params(*over),
        "midtrain",
        data_dir=data_root,
        out_dir=tmp_path / "one",
        init_checkpoint=init,
        progress=False,
    )
    two = run_stage(
        smoke_params(*over, "midtrain.nproc=2"),
        "midtrain",
        data_dir=data_root,
        out_dir=tmp_path / "two",
        init_checkpoint=init,
        progress=False,
    )
    _curves_match(one, two)
    for r in (one, two):
        load = r.state["expert_load"][-1]["layers"][0]["load"]
        assert load[0] == 0 and sum(load) == 8 * 64 * 2  # global tokens x top-k, summed over ranks
    assert two.state["expert_load"] == one.state["expert_load"]  # same routing on both
    w1, w2 = (load_checkpoint(r.checkpoint)[0].state_dict() for r in (one, two))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < TOL


def test_two_processes_match_one_with_olmoe_aux_losses(data_root, tmp_path):
    over = [
        "pretrain.steps=3",
        "pretrain.log_every=1",
        "pretrain.eval_every=3",
        "pretrain.checkpoint_every=3",
        "pretrain.batch_size=8",
        "runtime.threads=2",
        "model.moe.router=softmax",
        "model.moe.renormalize=false",
        "model.moe.route_scale=1.0",
        "model.moe.bias_update_rate=0.0",
        "model.moe.aux_loss_weight=0.01",
        "model.moe.z_loss_weight=0.001",
    ]
    one = run_stage(
        smoke_params(*over), "pretrain", data_dir=data_root, out_dir=tmp_path / "one", progress=False
    )
    two = run_stage(
        smoke_params(*over, "pretrain.nproc=2"),
        "pretrain",
        data_dir=data_root,
        out_dir=tmp_path / "two",
        progress=False,
    )
    _curves_match(one, two)
    aux1 = [r["aux_loss"] for r in one.state["logs"]]
    aux2 = [r["aux_loss"] for r in two.state["logs"]]
    assert all(a > 0 for a in aux1) and np.abs(np.array(aux1) - np.array(aux2)).max() < TOL

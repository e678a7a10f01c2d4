"""run_stage end to end on real (small) shards: what a stage writes and reports."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import PRETRAIN, smoke_params

from mobilemoe.checkpoint import load_checkpoint, read_config, sha256_file, verify
from mobilemoe.data.shards import TokenShards
from mobilemoe.train import run_stage
from mobilemoe.train.loop import masked_ce_sum


def test_pretrain_learns_and_reports(pretrained, data_root):
    r = pretrained
    s = r.summary()
    # From ~ln(512) = 6.24 at initialisation, 12 steps must already help.
    assert s["first_val_loss"] == pytest.approx(math.log(512), abs=0.15)
    assert s["last_val_loss"] < s["first_val_loss"] - 0.3
    assert [v[0] for v in r.val_curve] == [0, 4, 8, 12]
    assert [t[0] for t in r.train_curve] == list(range(1, 13))  # every step's loss
    assert s["tok_per_s"] > 0 and s["flop_per_s"] > 0 and 0 < s["mfu"] < 1
    assert s["tokens"] == 12 * 4 * 64
    # Per-layer expert load: top-2 of 4 experts, so max/mean is in [1, 2].
    load = r.state["expert_load"][-1]["layers"]
    n_layers = smoke_params().model.n_layers
    assert len(load) == n_layers and all(1.0 <= l["max_over_mean"] <= 2.0 for l in load)
    assert all(sum(l["load"]) == 4 * 64 * 2 * 2 for l in load)  # tokens x top-k x log_every steps
    plots = r.history_for_plots()
    assert set(plots["expert_load"]) == {str(i) for i in range(n_layers)} and plots["val"] == r.val_curve


def test_pretrain_checkpoints_and_final_folder(pretrained, data_root, tokenizer_file):
    out = pretrained.out_dir
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_000008", "step_000012"]  # keep_checkpoints=2 pruned step 4
    ck = out / "checkpoints" / "step_000012"
    files = set(verify(ck)["files"])
    assert files == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.pt",
        "trainer_state.json",
    }
    cfg = read_config(pretrained.checkpoint)
    assert cfg["stage"] == "pretrain" and cfg["step"] == 12 and cfg["qat"] is None
    assert cfg["init_checkpoint_sha256"] is None
    assert cfg["tokenizer_sha256"] == sha256_file(tokenizer_file)
    meta = TokenShards(data_root / "shards" / "pretrain").meta
    assert cfg["data"]["splits"]["train"]["sha256"] == meta["splits"]["train"]["sha256"]
    assert cfg["data"]["splits"]["val"]["sha256"] == meta["splits"]["val"]["sha256"]
    assert "optimizer.pt" not in verify(pretrained.checkpoint)["files"]
    assert pretrained.checkpoint_sha256 == verify(pretrained.checkpoint)["sha256"]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [0, 4, 8, 12]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    # A finished stage is not trained again.
    again = run_stage(smoke_params(*PRETRAIN), "pretrain", data_dir=data_root, out_dir=out, progress=False)
    assert again.checkpoint_sha256 == pretrained.checkpoint_sha256


def test_midtrain_and_sft_chain_with_loss_mask(pretrained, data_root, tmp_path):
    calls = []

    class Sink:  # the pipeline's metrics sink: duck-typed on_log / on_eval
        def on_log(self, step, metrics):
            calls.append(("log", step, metrics["train_loss"]))

        def on_eval(self, step, metrics):
            calls.append(("eval", step, metrics["val_loss"]))

    p = smoke_params("midtrain.steps=6", "midtrain.eval_every=3", "sft.steps=6", "sft.eval_every=3")
    mid = run_stage(
        p,
        "midtrain",
        data_dir=data_root,
        out_dir=tmp_path / "mid",
        init_checkpoint=pretrained.checkpoint,
        callbacks=[Sink()],
        progress=False,
    )
    assert read_config(mid.checkpoint)["init_checkpoint_sha256"] == pretrained.checkpoint_sha256
    assert ("eval", 0, mid.val_curve[0][1]) in calls and any(c[0] == "log" for c in calls)
    # Mid-training anneals to zero: its last update used a tiny LR.
    assert mid.state["logs"][-1]["lr"] < 0.2 * p.midtrain.lr
    sft = run_stage(
        p, "sft", data_dir=data_root, out_dir=tmp_path / "sft", init_checkpoint=mid.checkpoint, progress=False
    )
    assert sft.val_curve[-1][1] < sft.val_curve[0][1]
    # The recorded validation loss is the mean CE over response tokens only.
    model, _ = load_checkpoint(sft.checkpoint)
    model.eval()
    val = TokenShards(data_root / "shards" / "sft").val
    from mobilemoe.train.loader import eval_batches, fixed_windows

    off = fixed_windows(val, p.sft.eval_batches * p.sft.batch_size, p.sft.seq_len)
    num = den = 0.0
    with torch.no_grad():
        for mb in eval_batches(val, off, p.sft.seq_len, 3, 0, 1, "cpu"):
            num += float(masked_ce_sum(model(mb.inputs), mb.targets, mb.mask))
            den += float(mb.mask.sum())
    assert num / den == pytest.approx(sft.val_curve[-1][1], abs=1e-5)


def test_masked_loss_ignores_prompt_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32)
    other = targets.clone()
    other[mask == 0] = (other[mask == 0] + 3) % 11  # change only targets without loss
    a, b = masked_ce_sum(logits, targets, mask), masked_ce_sum(logits, other, mask)
    assert torch.equal(a, b)
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none")
    assert a.item() == pytest.approx(float((full * mask.reshape(-1)).sum()), rel=1e-6)


@pytest.mark.parametrize("moe", [False, True])
def test_bf16_autocast_trains_with_fp32_master_weights(moe, data_root, tmp_path):
    from safetensors.torch import load_file

    over = ["runtime.precision=bf16", "pretrain.steps=4", "pretrain.eval_every=4"]
    if not moe:
        over.append("model.moe=null")
    r = run_stage(
        smoke_params(*over), "pretrain", data_dir=data_root, out_dir=tmp_path / "bf16", progress=False
    )
    assert r.val_curve[-1][1] < r.val_curve[0][1]
    weights = load_file(str(r.checkpoint / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())

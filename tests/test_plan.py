"""The memory plan (``mobilemoe plan``): the paper's arithmetic, the settings it
recommends, the refusal at ``start`` of settings that do not fit, and its numbers against
the peak memory a real training step takes on the CPU.

Measured peak: every tensor storage alive at once, counted by torch's ``MemTracker``
(``torch.distributed._tools.mem_tracker``: a dispatch mode that sees each allocation,
autograd's saved tensors included, and each free), over two full steps (forward,
backward, clip, AdamW) in fp32, one process. The plan must be within ``WITHIN`` of it.
Measured here: tiny (16 x 128) planned/measured 1.08 without and 1.06 with activation
checkpointing; the mid-size model (4 x 256) 1.06 and 0.97.
"""

from __future__ import annotations

import json

import pytest
import torch

from mobilemoe.cli import main
from mobilemoe.config import ConfigError, load_preset
from mobilemoe.plan import _shapes, memory, plan

WITHIN = 0.20


def test_mobilemoe_l_on_8_gpus_of_80_gb_needs_fsdp():
    p = plan(load_preset("mobilemoe-l"), gpus=8, gpu_mem_gb=80)
    total = p["total_params"]
    assert 5.3e9 < total < 5.35e9
    # 16 bytes x 5.3 B = 85 GB in all: about 10.6 GB per GPU under FSDP on 8 GPUs.
    assert p["state_bytes_per_gpu"] == pytest.approx(16 * total / 8, rel=1e-6)
    assert 10.5e9 < p["state_bytes_per_gpu"] < 10.8e9
    ddp = p["stages"]["pretrain"]["options"]["ddp"]["without_checkpointing"]
    assert ddp["state_bytes"] == 16 * total > p["usable_bytes_per_gpu"]  # DDP cannot fit
    assert p["fits"] and p["parallelism"] == "fsdp"
    assert p["most_demanding_stage"] == "pretrain"
    rec = p["stages"]["pretrain"]["recommended"]
    assert rec["micro_batch"] * rec["grad_accum"] * 8 == 512 and rec["total_bytes"] <= 72e9
    assert p["stages"]["pretrain"]["gpu_hours"] > p["stages"]["sft"]["gpu_hours"] > 0


def test_plan_json_carries_the_per_gpu_numbers(capsys):
    args = ["plan", "--preset", "mobilemoe-s", "--gpus", "8", "--gpu-mem-gb", "80", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "fits",
        "parallelism",
        "state_bytes_per_gpu",
        "params_bytes_per_gpu",
        "grads_bytes_per_gpu",
        "optimizer_bytes_per_gpu",
        "activations_bytes_per_gpu",
        "working_bytes_per_gpu",
        "micro_batch",
        "grad_accum",
        "gpu_hours",
    ):
        assert key in out
    s = out["stages"]["pretrain"]["options"]["fsdp"]
    assert s["with_checkpointing"]["activations_bytes"] < s["without_checkpointing"]["activations_bytes"]


def test_plan_table_and_a_plan_that_does_not_fit(capsys):
    assert main(["plan", "--preset", "mobilemoe-l", "--gpus", "1", "--gpu-mem-gb", "24"]) == 0
    text = capsys.readouterr().out
    assert "nothing fits" in text and "GPU-hours" in text and "does not fit" in text
    assert main(["plan", "--preset", "tiny", "--gpus", "0", "--gpu-mem-gb", "24"]) == 2
    assert "--gpus must be >= 1" in capsys.readouterr().err


def test_start_refuses_settings_that_do_not_fit_the_gpu(monkeypatch):
    import mobilemoe.preflight as pf

    # The whole micro-batch (512 x 4096 / 8 GPUs) at once, replicated: far too big.
    params = load_preset("mobilemoe-l", ["pretrain.grad_accum=1", "pretrain.parallelism=ddp"])
    monkeypatch.setattr(pf, "cuda_memory_gb", lambda params: 80.0)
    with pytest.raises(ConfigError) as e:
        pf.preflight(params, "presets/mobilemoe-l.yaml", memory_plan=True)  # as the flow's start does
    first = str(e.value).splitlines()[0]
    assert first.startswith("presets/mobilemoe-l.yaml: memory plan:")
    assert "pretrain: needs 1,516.0 GB per GPU" in first and "72.0 GB are usable of 80 GB" in first
    assert "set pretrain.parallelism=fsdp pretrain.grad_accum=32" in first
    assert "midtrain" not in first  # only the stage that does not fit is named
    assert "GPU-hours" in str(e.value)  # followed by the plan's table
    # The shipped preset (the plan's settings for 8 x 80 GB) passes; on the CPU nothing is checked.
    pf.preflight(load_preset("mobilemoe-l"), memory_plan=True)
    pf.preflight(params)  # commands that do not train do not plan
    monkeypatch.setattr(pf, "cuda_memory_gb", lambda params: None)
    pf.preflight(params, memory_plan=True)


def measured_peak_bytes(model_cfg, micro_batch: int, seq_len: int, checkpointing: bool) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker

    from mobilemoe.config import load_preset as _load
    from mobilemoe.model import build_model
    from mobilemoe.train.fsdp import checkpoint_blocks
    from mobilemoe.train.loop import masked_ce_sum
    from mobilemoe.train.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(model_cfg)
    if checkpointing:
        checkpoint_blocks(model)
    optimizer = build_optimizer(model, _load("tiny").pretrain)
    x = torch.randint(0, model_cfg.vocab_size, (micro_batch, seq_len + 1))
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tracker:
            for _ in range(2):
                tracker.reset_mod_stats()
                loss = masked_ce_sum(model(x[:, :-1]), x[:, 1:], None) / x.numel()
                loss.backward()
                del loss
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(before)
    peak = tracker.get_tracker_snapshot("peak")
    return max(int(v["Total"]) for v in peak.values())


def _check(model_cfg, micro_batch: int, seq_len: int, checkpointing: bool) -> tuple[int, int]:
    planned = memory(_shapes(model_cfg, seq_len), "ddp", 1, micro_batch, seq_len, False, checkpointing)
    measured = measured_peak_bytes(model_cfg, micro_batch, seq_len, checkpointing)
    assert abs(planned["total_bytes"] - measured) <= WITHIN * measured, (planned, measured)
    return planned["total_bytes"], measured


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_matches_measured_peak_memory_tiny(checkpointing):
    cfg = load_preset("tiny")
    _check(cfg.model, cfg.pretrain.batch_size, cfg.pretrain.seq_len, checkpointing)


def mid_size_model():
    """Two layers of MobileMoE-S shapes (d 768, 60 experts of 384, top-4, shared 1536) with a
    4k vocabulary: 120 M parameters."""
    return load_preset("mobilemoe-s", ["model.n_layers=2", "model.vocab_size=4096"]).model


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_matches_measured_peak_memory_mid_size(checkpointing):
    _check(mid_size_model(), 4, 256, checkpointing)

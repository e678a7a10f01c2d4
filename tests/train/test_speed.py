"""FLOP/s bookkeeping: peak lookup, the CPU ceiling, training FLOPs, load statistics."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import smoke_params

from mobilemoe.model.accounting import account
from mobilemoe.train.callbacks import load_stats
from mobilemoe.train.speed import cpu_matmul_ceiling, gpu_peak, training_flops_per_token


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L4", 121e12),
    ],
)
def test_gpu_peak_table(name, peak):
    assert gpu_peak(name).flop_per_s == peak


def test_unknown_gpu_has_no_peak_rather_than_a_guess():
    p = gpu_peak("Some Future Accelerator")
    assert p.flop_per_s is None and "unknown" in p.source


def test_cpu_ceiling_is_measured_without_touching_the_rng_or_threads():
    torch.manual_seed(0)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    flops = cpu_matmul_ceiling(1, size=256, repeats=2)
    assert 1e8 < flops < 1e13
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads


def test_training_flops_are_three_forwards():
    cfg = smoke_params().model
    assert training_flops_per_token(cfg, 64) == 3 * account(cfg, 64).flops_per_token


def test_load_stats():
    s = load_stats([10.0, 10.0, 10.0, 10.0])
    assert s == {"max_over_mean": 1.0, "cv": 0.0}
    s = load_stats([40.0, 0.0, 0.0, 0.0])
    assert s["max_over_mean"] == 4.0 and s["cv"] == pytest.approx(math.sqrt(3))

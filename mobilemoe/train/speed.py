"""Achieved FLOP/s against the hardware's peak: MFU on GPU, a measured ceiling on CPU.

    peak = peak_flops(device, threads)   # PeakFlops(flop_per_s, source)

Training costs 3x the forward FLOPs per token (forward + backward's two matmuls per
forward matmul; Kaplan et al. 2020 / PaLM's MFU definition), with the forward FLOPs from
``mobilemoe.model.accounting.account(cfg, seq_len)``.

* GPU: the device's dense bf16 tensor-core peak from a table of datasheet numbers (no
  sparsity); an unknown GPU gets no MFU rather than a made-up one.
* CPU: no datasheet applies (cores shared, clocks vary), so the ceiling is measured on the
  spot: the best of a few large fp32 matmuls at the configured thread count. "MFU" on CPU
  is therefore the fraction of what this machine's BLAS achieves right now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

# Dense bf16 tensor-core peaks, FLOP/s, from NVIDIA datasheets (SXM parts unless named).
GPU_BF16_PEAK_FLOP_PER_S = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 70e12,  # AWS A10G (lower clock than the A10)
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "V100": 125e12,  # fp16 tensor cores (no bf16): an upper bound
    "T4": 65e12,  # fp16 tensor cores (no bf16)
}


@dataclass
class PeakFlops:
    flop_per_s: Optional[float]
    source: str


def gpu_peak(name: str) -> PeakFlops:
    # Longest matching key first: "H100 PCIe" before "H100", "A10G" before "A10".
    for key in sorted(GPU_BF16_PEAK_FLOP_PER_S, key=len, reverse=True):
        if key.lower() in name.lower():
            return PeakFlops(GPU_BF16_PEAK_FLOP_PER_S[key], f"{name}: datasheet dense bf16 peak")
    return PeakFlops(None, f"{name}: unknown GPU, no peak (add it to GPU_BF16_PEAK_FLOP_PER_S)")


def cpu_matmul_ceiling(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of ``size``^3 matmuls at ``threads`` threads (~0.1-0.5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # Deterministic inputs (no RNG draw: training's RNG stream must not depend on this).
        a = torch.linspace(-1, 1, size * size).reshape(size, size)
        b = a.t().contiguous()
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        return 2 * size**3 / best
    finally:
        torch.set_num_threads(before)


def peak_flops(device: torch.device, threads: int) -> PeakFlops:
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    return PeakFlops(cpu_matmul_ceiling(threads), f"CPU fp32 matmul ceiling measured now ({threads} threads)")


def training_flops_per_token(model_cfg, seq_len: int) -> int:
    from ..model.accounting import account

    return 3 * account(model_cfg, seq_len).flops_per_token

"""Micro-benchmark: one decode step's attention over a 2,048-slot fp32 KV cache, as ExecuTorch
programs in one process, three ways:

* ``bmm_mask``: what the exporter used to emit: XNNPACK batch matmuls over every cache slot
  plus an additive mask (K cached transposed);
* ``custom_sdpa``: ExecuTorch's ``llama::custom_sdpa`` (reads slots up to the position;
  causal, no window);
* ``attend_kv``: mobilemoe's ``mmoe::attend_kv`` (reads only the slots the query may see,
  sliding window included).

Each program writes the step's K/V into its cache in place (index_copy_, reinplaced) and
attends, at the presets' true head shapes: MobileMoE-S (12 query heads, 4 KV heads, head
dim 64) and MobileLLM-Pro (20 / 4 / 64; its local layers use a 512-slot window, which only
``attend_kv`` (and ``bmm_mask`` through its mask) expresses here), at positions 128 and 1,900.
Medians of interleaved repeats, with min and max.

``python benchmarks/attention.py [--reps 7] [--calls 200] [--threads 1]``. Prints a table,
then one JSON line; also writes benchmarks/results/attention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stamp import time_per_call, write_result  # noqa: E402  (this script's folder is on sys.path)

import mobilemoe_kernels  # noqa: E402
import mobilemoe_kernels.ops  # noqa: E402,F401

S, HD = 2048, 64
SHAPES = {"mobilemoe-s": (12, 4), "mobilellm-pro": (20, 4)}
POSITIONS = (128, 1900)
WINDOW = 512  # MobileLLM-Pro's local layers


class BmmMask(torch.nn.Module):
    """Today's ExportAttention core: all S slots, additive mask."""

    def __init__(self, H, KV, window):
        super().__init__()
        self.H, self.KV, self.window = H, KV, window
        self.register_buffer("k_cache_T", torch.randn(KV, HD, S))
        self.register_buffer("v_cache", torch.randn(KV, S, HD))
        self.register_buffer("k_pos", torch.arange(S))

    def forward(self, q_THd, k_TKd, v_TKd, input_pos):
        rep = self.H // self.KV
        self.k_cache_T.index_copy_(2, input_pos, k_TKd.permute(1, 2, 0))
        self.v_cache.index_copy_(1, input_pos, v_TKd.permute(1, 0, 2))
        q_T1 = input_pos.unsqueeze(1)
        seen = self.k_pos.unsqueeze(0) <= q_T1
        if self.window:
            seen = seen & ((q_T1 - self.k_pos.unsqueeze(0)) < self.window)
        bias = torch.where(seen, 0.0, float("-inf")).repeat(rep, 1)
        q = q_THd.view(-1, self.KV, rep, HD).permute(1, 2, 0, 3).contiguous().view(self.KV, -1, HD)
        q = q * HD**-0.5
        scores = torch.bmm(q, self.k_cache_T) + bias
        out = torch.bmm(torch.softmax(scores, dim=-1), self.v_cache)
        return out.view(self.KV, rep, -1, HD).permute(2, 0, 1, 3).contiguous().view(-1, self.H * HD)


class CustomSdpa(torch.nn.Module):
    """ExecuTorch's llama::custom_sdpa over [1, S, KV, hd] caches (causal, from start_pos)."""

    def __init__(self, H, KV):
        super().__init__()
        self.H, self.KV = H, KV
        self.register_buffer("k_cache", torch.randn(1, S, KV, HD))
        self.register_buffer("v_cache", torch.randn(1, S, KV, HD))

    def forward(self, q_THd, k_TKd, v_TKd, input_pos):
        self.k_cache.index_copy_(1, input_pos, k_TKd.unsqueeze(0))
        self.v_cache.index_copy_(1, input_pos, v_TKd.unsqueeze(0))
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start < S)
        out = torch.ops.llama.custom_sdpa(
            q_THd.unsqueeze(0), self.k_cache, self.v_cache, start, None, 0.0, True
        )
        return out.view(-1, self.H * HD)


class AttendKv(torch.nn.Module):
    """mobilemoe's mmoe::attend_kv (K cached transposed [KV, hd, S], V [KV, S, hd])."""

    def __init__(self, H, KV, window):
        super().__init__()
        self.H, self.window = H, window
        self.register_buffer("k_cache_T", torch.randn(KV, HD, S))
        self.register_buffer("v_cache", torch.randn(KV, S, HD))

    def forward(self, q_THd, k_TKd, v_TKd, input_pos):
        self.k_cache_T.index_copy_(2, input_pos, k_TKd.permute(1, 2, 0))
        self.v_cache.index_copy_(1, input_pos, v_TKd.permute(1, 0, 2))
        out = torch.ops.mmoe.attend_kv(q_THd, self.k_cache_T, self.v_cache, input_pos, self.window or 0)
        return out.view(-1, self.H * HD)


def _example(H, KV, T=1, pos=0):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(T, H, HD, generator=g),
        torch.randn(T, KV, HD, generator=g),
        torch.randn(T, KV, HD, generator=g),
        torch.arange(pos, pos + T),
    )


def _lower(module, H, KV, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    with torch.no_grad():
        ep = torch.export.export(module.eval(), _example(H, KV), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    prog = edge.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True))
    path.write_bytes(prog.buffer)
    return path


def build_programs(tmp: Path) -> dict[str, Path]:
    try:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama::custom_sdpa)

        have_sdpa = True
    except Exception:  # noqa: BLE001 - the op library is optional
        have_sdpa = False
    paths = {}
    for model, (H, KV) in SHAPES.items():
        paths[f"{model}/bmm_mask"] = _lower(BmmMask(H, KV, None), H, KV, tmp / f"{model}_bmm.pte")
        paths[f"{model}/attend_kv"] = _lower(AttendKv(H, KV, None), H, KV, tmp / f"{model}_attend.pte")
        if have_sdpa:
            paths[f"{model}/custom_sdpa"] = _lower(CustomSdpa(H, KV), H, KV, tmp / f"{model}_sdpa.pte")
    H, KV = SHAPES["mobilellm-pro"]
    paths["mobilellm-pro/bmm_mask_w512"] = _lower(BmmMask(H, KV, WINDOW), H, KV, tmp / "pro_bmm_w.pte")
    paths["mobilellm-pro/attend_kv_w512"] = _lower(AttendKv(H, KV, WINDOW), H, KV, tmp / "pro_attend_w.pte")
    return paths


def run(paths: dict[str, Path], threads: int, reps: int, calls: int) -> dict:
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)
    cases = {}
    for name, path in paths.items():
        method = _C._load_for_executorch(str(path))
        H, KV = SHAPES[name.split("/")[0]]
        for pos in POSITIONS:
            inputs = _example(H, KV, pos=pos)
            cases[f"{name}@{pos}"] = lambda m=method, x=inputs: m.forward(x)
    for f in cases.values():  # warm-up
        for _ in range(5):
            f()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, f in cases.items():
            samples[k].append(time_per_call(f, calls) * 1e6)
    return {
        k: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)} for k, v in samples.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mobilemoe_kernels.load()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_programs(Path(tmp))
        results = {th: run(paths, th, args.reps, args.calls) for th in args.threads}
    print(
        f"\none decode step's attention (write K/V + attend), S={S}, hd={HD}, isa={mobilemoe_kernels.isa()}"
    )
    print(f"{'threads':>7} {'case':<40} {'median us':>10} {'min':>9} {'max':>9}")
    for th, res in results.items():
        for k, v in res.items():
            print(f"{th:>7} {k:<40} {v['median_us']:>10.1f} {v['min_us']:>9.1f} {v['max_us']:>9.1f}")
    out = {
        "times_us": {str(th): res for th, res in results.items()},
        "shapes": {m: {"n_heads": h, "n_kv_heads": kv, "head_dim": HD} for m, (h, kv) in SHAPES.items()},
        "max_seq_len": S,
        "positions": list(POSITIONS),
        "window": WINDOW,
        "isa": mobilemoe_kernels.isa(),
    }
    write_result("attention", out)  # with the machine and the date
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

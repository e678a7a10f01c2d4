"""Micro-benchmark: mmoe::moe_ffn_8da4w (ours) vs an XNNPACK 8da4w dense SwiGLU of the same
active size, both as ExecuTorch programs in one process, at MobileMoE-S MoE layer shapes
(D=768, E=60, H=384, K=4).

(a) decode T=1: ours (random expert ids per call from a fixed list) vs dense hidden K*H;
(b) prefill T=128 (random routing) vs the same dense SwiGLU at T=128 (same FLOPs).
Also "decode_ours_hot": the same experts every call (weights cache-resident, as the dense
program's always are); random experts read their 2.9 MB from DRAM (all experts: 44 MB).

``python benchmarks/moe_kernel.py [--reps 7] [--calls 50] [--threads 1 2]``. Prints a table,
then one JSON line; also writes benchmarks/results/moe_kernel.json.
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
from mobilemoe_kernels.pack import pack_experts, quantize_int4_g32  # noqa: E402

D, E, H, K = 768, 60, 384, 4
NAMES = ("w13_packed", "w13_scales", "w13_corr", "w2_packed", "w2_scales", "w2_corr")


class RoutedMoE(torch.nn.Module):
    def __init__(self, packed: dict[str, torch.Tensor]):
        super().__init__()
        for n in NAMES:
            self.register_buffer(n, packed[n])

    def forward(self, x, expert_ids, gates):
        return torch.ops.mmoe.moe_ffn_8da4w(x, expert_ids, gates, *[getattr(self, n) for n in NAMES])


class DenseSwiGLU(torch.nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def _lower(ep, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)
    return path


def build_programs(tmp: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    w13 = torch.randn(E, 2 * H, D) / D**0.5
    w2 = torch.randn(E, D, H) / H**0.5
    q13, s13 = quantize_int4_g32(w13)
    q2, s2 = quantize_int4_g32(w2)
    ours = RoutedMoE(pack_experts(q13, s13, q2, s2)).eval()
    T = torch.export.Dim("T", min=1, max=512)
    ex = (torch.randn(2, D), torch.zeros(2, K, dtype=torch.int64), torch.rand(2, K))
    ep = torch.export.export(ours, ex, dynamic_shapes=({0: T}, {0: T}, {0: T}), strict=False)
    paths = {"ours": _lower(ep, tmp / "ours.pte")}

    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    dense = DenseSwiGLU(D, K * H).eval()
    quantize_(
        dense, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))
    )
    for t in (1, 128):
        ep = torch.export.export(dense, (torch.randn(t, D),), strict=False)
        paths[f"dense{t}"] = _lower(ep, tmp / f"dense{t}.pte")
    return paths


def run(paths: dict[str, Path], threads: int, reps: int, calls: int) -> dict:
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)
    ours = _C._load_for_executorch(str(paths["ours"]))
    d1 = _C._load_for_executorch(str(paths["dense1"]))
    d128 = _C._load_for_executorch(str(paths["dense128"]))
    g = torch.Generator().manual_seed(1)
    id_list = [torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(1)]) for _ in range(64)]
    x1 = torch.randn(1, D, generator=g)
    g1 = torch.softmax(torch.randn(1, K, generator=g), -1)
    x128 = torch.randn(128, D, generator=g)
    ids128 = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(128)])
    g128 = torch.softmax(torch.randn(128, K, generator=g), -1)
    it = [0]

    def ours_decode():
        it[0] = (it[0] + 1) % len(id_list)
        ours.forward((x1, id_list[it[0]], g1))

    cases = {
        "decode_ours": ours_decode,
        # same 4 experts every call: their 2.9 MB stay in cache like the dense program's
        "decode_ours_hot": lambda: ours.forward((x1, id_list[0], g1)),
        "decode_xnnpack": lambda: d1.forward((x1,)),
        "prefill_ours": lambda: ours.forward((x128, ids128, g128)),
        "prefill_xnnpack": lambda: d128.forward((x128,)),
    }
    for f in cases.values():  # warm-up
        for _ in range(5):
            f()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, f in cases.items():
            n = calls if k.startswith("decode") else max(3, calls // 10)
            samples[k].append(time_per_call(f, n) * 1e6)
    res = {
        k: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)} for k, v in samples.items()
    }
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mobilemoe_kernels.load()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_programs(Path(tmp))
        results = {th: run(paths, th, args.reps, args.calls) for th in args.threads}
    print(
        f"\nmmoe::moe_ffn_8da4w vs XNNPACK 8da4w dense SwiGLU (D={D} E={E} H={H} K={K}), "
        f"isa={mobilemoe_kernels.isa()}"
    )
    print(f"{'threads':>7} {'case':<16} {'median us':>10} {'min':>9} {'max':>9}")
    for th, res in results.items():
        for k, v in res.items():
            print(f"{th:>7} {k:<16} {v['median_us']:>10.1f} {v['min_us']:>9.1f} {v['max_us']:>9.1f}")
        print(
            f"{th:>7} ratios: decode "
            f"{res['decode_ours']['median_us'] / res['decode_xnnpack']['median_us']:.2f}x"
            f"  decode_hot {res['decode_ours_hot']['median_us'] / res['decode_xnnpack']['median_us']:.2f}x"
            f"  prefill {res['prefill_ours']['median_us'] / res['prefill_xnnpack']['median_us']:.2f}x"
        )
    th0 = args.threads[0]
    r0 = results[th0]
    out = {
        "decode_hot_ratio": round(r0["decode_ours_hot"]["median_us"] / r0["decode_xnnpack"]["median_us"], 3),
        "decode_ratio": round(r0["decode_ours"]["median_us"] / r0["decode_xnnpack"]["median_us"], 3),
        "prefill_ratio": round(r0["prefill_ours"]["median_us"] / r0["prefill_xnnpack"]["median_us"], 3),
        "threads": th0,
        "isa": mobilemoe_kernels.isa(),
        "times_us": {str(th): res for th, res in results.items()},
        "ratios_by_threads": {
            str(th): {
                "decode": round(res["decode_ours"]["median_us"] / res["decode_xnnpack"]["median_us"], 3),
                "prefill": round(res["prefill_ours"]["median_us"] / res["prefill_xnnpack"]["median_us"], 3),
            }
            for th, res in results.items()
        },
        "shapes": {"D": D, "E": E, "H": H, "K": K, "T_prefill": 128},
    }
    write_result("moe_kernel", out)  # with the machine and the date
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

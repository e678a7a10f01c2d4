"""Micro-benchmark: mmoe::moe_ffn_8da4w (ours) vs an XNNPACK 8da4w dense SwiGLU of the same
active size, both as ExecuTorch programs in one process, at MobileMoE-S MoE layer shapes
(D=768, E=60, H=384, K=4).

Decode (T=1) is compared per byte, with both sides reading their weights from the same
level of the memory hierarchy:

* hot/hot: ours with the same K experts every call vs one XNNPACK program called again and
  again: both read ~2 MB that stay in cache;
* cold/cold (the headline): ours with different experts every call (a random permutation
  of the E experts cut into E/K disjoint sets of K, called in turn) vs E/K instances of the
  XNNPACK program called in turn. Each instance packs its own copy of the weights at load,
  so together they hold about the whole MoE layer's bytes, and on both sides every call
  reads weights last touched E/K calls (about one MoE layer's bytes) earlier, as in real
  decoding, where a dense model's layers are not in cache either.

Prefill (T=128, random routing, so every expert is read) is compared on the active FLOPs:
ours vs the same dense SwiGLU at T=128, called hot (the headline: the stricter baseline)
and cold (E/K instances in turn).

``python benchmarks/moe_kernel.py [--reps 7] [--calls 50] [--threads 1,2]``. Prints a
table, then one JSON line; also writes benchmarks/results/moe_kernel.json (with the machine
and the date, benchmarks/stamp.py).
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


def build_programs(tmp: Path) -> tuple[dict[str, Path], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    w13 = torch.randn(E, 2 * H, D) / D**0.5
    w2 = torch.randn(E, D, H) / H**0.5
    q13, s13 = quantize_int4_g32(w13)
    q2, s2 = quantize_int4_g32(w2)
    packed = pack_experts(q13, s13, q2, s2)
    ours = RoutedMoE(packed).eval()
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
    return paths, packed


def layer_bytes(packed: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(bytes of the whole MoE layer's expert buffers, bytes one decode step reads: K experts)."""
    total = sum(t.numel() * t.element_size() for t in packed.values())
    return total, total * K // E


def cold_expert_sets(g: torch.Generator) -> list[torch.Tensor]:
    """Decode expert ids [1, K] for E/K calls in turn: a random permutation of the E experts
    cut into E/K disjoint sets. Cycled, every expert is read once every E/K calls, exactly as
    each of the E/K cold XNNPACK instances is."""
    perm = torch.randperm(E, generator=g)
    return [perm[i : i + K].reshape(1, K).clone() for i in range(0, E - K + 1, K)]


def run(paths: dict[str, Path], threads: int, reps: int, calls: int) -> dict:
    """Medians, min and max per case (us)."""
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)
    ours = _C._load_for_executorch(str(paths["ours"]))
    # each load packs its own copy of the weights (XNNPACK's packed buffers), so the cold
    # instances together hold n_cold x the active bytes, about the whole MoE layer
    n_cold = E // K
    d1 = [_C._load_for_executorch(str(paths["dense1"])) for _ in range(n_cold)]
    d128 = [_C._load_for_executorch(str(paths["dense128"])) for _ in range(n_cold)]
    g = torch.Generator().manual_seed(1)
    id_list = cold_expert_sets(g)
    x1 = torch.randn(1, D, generator=g)
    g1 = torch.softmax(torch.randn(1, K, generator=g), -1)
    x128 = torch.randn(128, D, generator=g)
    ids128 = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(128)])
    g128 = torch.softmax(torch.randn(128, K, generator=g), -1)
    it = {"ours": 0, "d1": 0, "d128": 0}

    def ours_decode():  # the chosen experts change every call
        it["ours"] = (it["ours"] + 1) % len(id_list)
        ours.forward((x1, id_list[it["ours"]], g1))

    def xnnpack_decode_cold():  # the next instance every call
        it["d1"] = (it["d1"] + 1) % n_cold
        d1[it["d1"]].forward((x1,))

    def xnnpack_prefill_cold():
        it["d128"] = (it["d128"] + 1) % n_cold
        d128[it["d128"]].forward((x128,))

    hot_ids = id_list[0]
    cases = {
        "decode_ours": ours_decode,
        "decode_xnnpack_cold": xnnpack_decode_cold,
        # same K experts every call: their ~2 MB stay in cache, like one XNNPACK program's
        "decode_ours_hot": lambda: ours.forward((x1, hot_ids, g1)),
        "decode_xnnpack": lambda: d1[0].forward((x1,)),
        "prefill_ours": lambda: ours.forward((x128, ids128, g128)),
        "prefill_xnnpack": lambda: d128[0].forward((x128,)),
        "prefill_xnnpack_cold": xnnpack_prefill_cold,
    }
    for f in cases.values():  # warm-up (every cold instance at least once)
        for _ in range(n_cold + 1):
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


def ratios(res: dict) -> dict[str, float]:
    """ours / XNNPACK per comparison (medians)."""

    def r(a: str, b: str) -> float:
        return round(res[a]["median_us"] / res[b]["median_us"], 3)

    return {
        "decode": r("decode_ours", "decode_xnnpack_cold"),  # cold/cold: the like-for-like headline
        "decode_hot": r("decode_ours_hot", "decode_xnnpack"),
        "decode_cold_vs_hot_xnnpack": r("decode_ours", "decode_xnnpack"),  # not like for like
        "prefill": r("prefill_ours", "prefill_xnnpack"),
        "prefill_vs_cold_xnnpack": r("prefill_ours", "prefill_xnnpack_cold"),
    }


def parse_threads(values: list[str]) -> list[int]:
    """``--threads 1,2`` or ``--threads 1 2``."""
    out = [int(v) for s in values for v in s.split(",") if v.strip()]
    if not out or min(out) < 1:
        raise SystemExit("--threads: positive integers, e.g. 1,2")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", nargs="+", default=["1,2"], help="thread counts, e.g. 1,2")
    args = ap.parse_args(argv)
    threads = parse_threads(args.threads)
    torch.set_num_threads(1)
    mobilemoe_kernels.load()
    with tempfile.TemporaryDirectory() as tmp:
        paths, packed = build_programs(Path(tmp))
        results = {th: run(paths, th, args.reps, args.calls) for th in threads}
    total_bytes, active_bytes = layer_bytes(packed)
    print(
        f"\nmmoe::moe_ffn_8da4w vs XNNPACK 8da4w dense SwiGLU (D={D} E={E} H={H} K={K}), "
        f"isa={mobilemoe_kernels.isa()}; expert bytes: layer {total_bytes / 1e6:.1f} MB, "
        f"per decode step {active_bytes / 1e6:.2f} MB; cold XNNPACK: {E // K} instances"
    )
    print(f"{'threads':>7} {'case':<21} {'median us':>10} {'min':>9} {'max':>9}")
    by_threads = {th: ratios(res) for th, res in results.items()}
    for th, res in results.items():
        for k, v in res.items():
            print(f"{th:>7} {k:<21} {v['median_us']:>10.1f} {v['min_us']:>9.1f} {v['max_us']:>9.1f}")
        rr = by_threads[th]
        print(
            f"{th:>7} ratios: decode cold/cold {rr['decode']:.2f}x (target <= 1.3)  hot/hot "
            f"{rr['decode_hot']:.2f}x  (cold ours / hot XNNPACK {rr['decode_cold_vs_hot_xnnpack']:.2f}x)"
            f"  prefill {rr['prefill']:.2f}x (target <= 1.5; vs cold XNNPACK "
            f"{rr['prefill_vs_cold_xnnpack']:.2f}x)"
        )
    th0 = threads[0]
    r0 = by_threads[th0]
    out = {
        # headline figures at the first thread count: decode cold/cold (like for like: both
        # read weights not in cache), decode hot/hot, prefill against the hot XNNPACK program
        "decode_ratio": r0["decode"],
        "decode_hot_ratio": r0["decode_hot"],
        "decode_cold_vs_hot_xnnpack_ratio": r0["decode_cold_vs_hot_xnnpack"],
        "prefill_ratio": r0["prefill"],
        "prefill_vs_cold_xnnpack_ratio": r0["prefill_vs_cold_xnnpack"],
        "targets": {"decode": 1.3, "prefill": 1.5},
        "threads": th0,
        "isa": mobilemoe_kernels.isa(),
        "times_us": {str(th): res for th, res in results.items()},
        "ratios_by_threads": {str(th): rr for th, rr in by_threads.items()},
        "shapes": {"D": D, "E": E, "H": H, "K": K, "T_prefill": 128},
        "bytes": {"layer": total_bytes, "decode_active": active_bytes, "xnnpack_cold_instances": E // K},
        "reps": args.reps,
        "calls": args.calls,
    }
    write_result("moe_kernel", out)  # with the machine and the date
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MoE layer cost vs a dense SwiGLU with the same active parameters (the FLOP floor).

Measured side by side in one process, 1 thread, medians of interleaved repeats:

* train fwd / fwd+bwd: our training path (token sort + split + one unbind) vs a dense
  SwiGLU of hidden k*H + shared (same active params, same FLOPs) vs running every expert
  masked (the naive fixed-shape way).
* decode (1 token): every expert masked vs the dense-active layer in eager torch and,
  with --pte, the export path (router + mobilemoe's top-k kernel ``mmoe::moe_ffn_f32`` +
  shared expert in XNNPACK) vs the dense-active layer as ExecuTorch programs (fp32).
  The INT4 kernel against XNNPACK INT4 is ``benchmarks/moe_kernel.py``.

Prints a table and, last, one JSON line with ``train_fwd_bwd_vs_dense`` and
``train_fwd_vs_dense`` for the first config (target: fwd+bwd <= 1.3); writes
benchmarks/results/moe_layer.json (per config, with the machine and date).

    .venv/bin/python benchmarks/moe_layer.py [--repeats 15] [--tokens 4096] [--pte]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp import write_result  # noqa: E402

from mobilemoe.config.model import MoEConfig  # noqa: E402
from mobilemoe.model.moe import MoEFeedForward, RoutedExperts, SwiGLU  # noqa: E402


class AllExpertsMasked(torch.nn.Module):
    """Every expert on every token, the unchosen ones' gates zero: the naive fixed shape."""

    def __init__(self, experts: RoutedExperts):
        super().__init__()
        E, H2, D = experts.w13.shape
        self.E, self.H = E, H2 // 2
        self.gate_up = torch.nn.Linear(D, E * H2, bias=False)
        self.down = torch.nn.Linear(E * self.H, D, bias=False)
        with torch.no_grad():
            self.gate_up.weight.copy_(experts.w13.reshape(E * H2, D))
            self.down.weight.copy_(experts.w2.permute(1, 0, 2).reshape(D, E * self.H))

    def forward(self, x_TD, routing):
        T, E, H = x_TD.shape[0], self.E, self.H
        gate_TE = torch.zeros(T, E).scatter(1, routing.topk_idx_TK, routing.topk_weight_TK)
        g, u = self.gate_up(x_TD).view(T, E, 2 * H).split(H, dim=-1)
        return self.down((torch.nn.functional.silu(g) * u * gate_TE.unsqueeze(-1)).reshape(T, E * H))


CONFIGS = {
    # the reference config
    "d512-32x256-top4-shared512": dict(d=512, E=32, H=256, k=4, shared=512),
    # one MobileMoE-S layer (d 768, 60 x 384, top-4, shared 1536; docs/paper.md#mobilemoe-s-architecture)
    "mobilemoe-s-layer": dict(d=768, E=60, H=384, k=4, shared=1536),
}


def build(c: dict):
    torch.manual_seed(0)
    cfg = MoEConfig(
        n_routed_experts=c["E"],
        expert_hidden=c["H"],
        top_k=c["k"],
        n_shared_experts=1 if c["shared"] else 0,
        shared_hidden=c["shared"],
        route_scale=2.5,
    )
    moe = MoEFeedForward(c["d"], cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    masked = MoEFeedForward(c["d"], cfg)
    masked.load_state_dict(moe.state_dict())
    masked.experts = AllExpertsMasked(masked.experts)
    dense = SwiGLU(c["d"], c["k"] * c["H"] + c["shared"])
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return moe, masked, dense


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_train(mods: dict, x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    grad = torch.randn_like(x)  # dense, not stride-0: docs/libraries.md#moe-compute-on-cpu

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        m.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_(True)
        m(xi).backward(grad)

    times = {name: {"fwd": [], "fwd_bwd": []} for name in mods}
    for m in mods.values():  # warm-up
        fwd(m)
        fwd_bwd(m)
    for _ in range(repeats):  # interleave so drift hits every variant alike
        for name, m in mods.items():
            times[name]["fwd"] += timed(lambda m=m: fwd(m), 1)
            times[name]["fwd_bwd"] += timed(lambda m=m: fwd_bwd(m), 1)
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def bench_decode_eager(masked, dense, d: int, repeats: int) -> dict[str, float]:
    x = torch.randn(1, d)
    out = {}
    with torch.no_grad():
        for name, m in (("masked_moe", masked), ("dense_active", dense)):
            m(x)
            out[name] = statistics.median(timed(lambda m=m: m(x), repeats * 20))
    return out


def bench_decode_pte(moe, dense, d: int, repeats: int) -> dict[str, float] | None:
    import mobilemoe_kernels
    from mobilemoe.export.modules import ExportMoE

    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    except ImportError:
        return None
    mobilemoe_kernels.load()
    rt = Runtime.get()
    x = torch.randn(1, d)
    out = {}
    for name, m in (("kernel_moe", ExportMoE(moe.eval())), ("dense_active", dense)):
        ep = torch.export.export(m.eval(), (x,), strict=False)
        prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        method = rt.load_program(prog.buffer).load_method("forward")
        method.execute((x,))
        out[name] = statistics.median(timed(lambda method=method: method.execute((x,)), repeats * 20))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--pte", action="store_true", help="also time XNNPACK-lowered decode")
    ap.add_argument("--out", default="benchmarks/results/moe_layer.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    for name in args.configs.split(","):
        c = CONFIGS[name]
        moe, masked, dense = build(c)
        x = torch.randn(args.tokens, c["d"])
        t = bench_train({"routed": moe, "dense_active": dense, "all_masked": masked}, x, args.repeats)
        dec = bench_decode_eager(masked, dense, c["d"], args.repeats)
        pte = bench_decode_pte(moe, dense, c["d"], args.repeats) if args.pte else None
        r = {
            "train_fwd_vs_dense": t["routed"]["fwd"] / t["dense_active"]["fwd"],
            "train_fwd_bwd_vs_dense": t["routed"]["fwd_bwd"] / t["dense_active"]["fwd_bwd"],
            "masked_fwd_bwd_vs_dense": t["all_masked"]["fwd_bwd"] / t["dense_active"]["fwd_bwd"],
            "decode_eager_masked_vs_dense": dec["masked_moe"] / dec["dense_active"],
            "ms": {k: {kk: vv * 1e3 for kk, vv in v.items()} for k, v in t.items()},
            "decode_eager_us": {k: v * 1e6 for k, v in dec.items()},
        }
        if pte:
            r["decode_pte_export_path_vs_dense"] = pte["kernel_moe"] / pte["dense_active"]
            r["decode_pte_us"] = {k: v * 1e6 for k, v in pte.items()}
        results[name] = r

    print(
        f"{'config':<28} {'fwd/dense':>10} {'fwd+bwd/dense':>14} {'masked/dense':>13} "
        f"{'dec masked':>13} {'dec kernel':>11}"
    )
    for name, r in results.items():
        pte_ratio = r.get("decode_pte_export_path_vs_dense")
        print(
            f"{name:<28} {r['train_fwd_vs_dense']:>10.2f} {r['train_fwd_bwd_vs_dense']:>14.2f} "
            f"{r['masked_fwd_bwd_vs_dense']:>13.2f} {r['decode_eager_masked_vs_dense']:>13.2f} "
            f"{(f'{pte_ratio:.2f}' if pte_ratio else '-'):>11}"
        )
    print(
        "(ratios of medians vs a dense SwiGLU with the same active parameters; "
        f"{args.tokens} tokens, {args.threads} thread(s), {args.repeats} repeats; decode = 1 token "
        "through the fixed-shape export path)"
    )
    write_result(
        "moe_layer",
        {"configs": results, "tokens": args.tokens, "threads": args.threads, "repeats": args.repeats},
        args.out,
    )
    first = results[args.configs.split(",")[0]]
    print(
        json.dumps(
            {
                "train_fwd_bwd_vs_dense": round(first["train_fwd_bwd_vs_dense"], 3),
                "train_fwd_vs_dense": round(first["train_fwd_vs_dense"], 3),
                "decode_masked_vs_dense": round(first["decode_eager_masked_vs_dense"], 3),
                "decode_export_path_vs_dense": (
                    round(first["decode_pte_export_path_vs_dense"], 3) if args.pte else None
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

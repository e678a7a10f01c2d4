"""``mobilemoe design``: the architecture the fitted law prefers under phone budgets.

    mobilemoe design --memory-gib 3 --gflops-per-token 2.5 [--tokens D] [--decode-tok-s R
                     --bandwidth-gbs B | --profile FILE] [--json] [--records FILE | --law FILE]

Budgets default to ``scaling:`` of the params; the base model (vocabulary, heads, norms,
router) is the params' ``model``. docs/scaling.md#design.
"""

from __future__ import annotations

import json
import math
import sys

from . import add_config_args, load_config
from .scaling import add_source_args, fit_records, load_records, read_json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "design", help="the architecture of least predicted loss under memory/compute/latency budgets"
    )
    add_config_args(p)
    add_source_args(p, law=True)
    p.add_argument(
        "--memory-gib", type=float, help="INT4 weight memory budget, GiB (default: scaling.memory_budget_gib)"
    )
    compute = p.add_mutually_exclusive_group()
    compute.add_argument(
        "--gflops-per-token",
        type=float,
        help="forward GFLOPs/token budget at --context (default: scaling.compute_budget_gflops_per_token)",
    )
    compute.add_argument(
        "--active-params", type=int, help="active params budget, embedding included (as `mobilemoe arch`)"
    )
    p.add_argument(
        "--tokens", type=int, help="training tokens (default: the sweep's tokens per active parameter)"
    )
    p.add_argument("--decode-tok-s", type=float, help="latency budget: decode tokens/s on the target")
    bw = p.add_mutually_exclusive_group()
    bw.add_argument("--bandwidth-gbs", type=float, help="the target's decode bandwidth, GB/s (device lab)")
    bw.add_argument("--profile", help="a device_profile result JSON with device_decode_bandwidth_gb_s")
    p.add_argument("--context", type=int, help="context the FLOPs are counted at (default: scaling.context)")
    p.add_argument("--top", type=int, default=5, help="other architectures to list")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def profile_bandwidth(path: str) -> float:
    """The decode bandwidth (GB/s) a device_profile stage measured."""
    from ..errors import UserError

    data = read_json(path, "device_profile result")
    for where in (data, data.get("metrics") if isinstance(data, dict) else None):
        if isinstance(where, dict) and isinstance(where.get("device_decode_bandwidth_gb_s"), (int, float)):
            return float(where["device_decode_bandwidth_gb_s"])
    raise UserError(
        f"{path}: no device_decode_bandwidth_gb_s (a device_profile stage's metrics); "
        "pass --bandwidth-gbs instead"
    )


def load_law(args, params) -> dict:
    from ..errors import UserError

    if args.law:
        law = read_json(args.law, "fitted law")
        if not isinstance(law, dict) or not {"form", "raw_params", "ranges"} <= law.keys():
            raise UserError(
                f"{args.law}: not a fitted law (write one with `mobilemoe scaling fit --json > FILE`)"
            )
        law.setdefault("source", args.law)
        return law
    records, source = load_records(args, params)
    return fit_records(records, source, n_bootstrap=0)


def _fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:.4g}, {hi:.4g}]"


def run(args) -> int:
    from ..errors import UserError
    from ..scaling.design import design

    params = load_config(args)
    if args.context is not None and args.context <= 0:
        raise UserError(f"--context must be > 0, got {args.context}")
    if args.top < 0:
        raise UserError(f"--top must be >= 0, got {args.top}")
    budget = params.scaling
    gflops = args.gflops_per_token
    if gflops is None and args.active_params is None:
        gflops = budget.compute_budget_gflops_per_token
    bandwidth = profile_bandwidth(args.profile) if args.profile else args.bandwidth_gbs
    law = load_law(args, params)
    out = design(
        law,
        params.model,
        memory_gib=args.memory_gib if args.memory_gib is not None else budget.memory_budget_gib,
        gflops_per_token=gflops,
        active_params=args.active_params,
        tokens=args.tokens,
        decode_tok_s=args.decode_tok_s,
        bandwidth_gbs=bandwidth,
        context=args.context or budget.context,
        top=args.top,
    )
    best = out["best"]
    for e in best["extrapolation"]:
        print(
            f"warning: {e['axis']} = {e['value']:.4g} is outside the range the law was fitted on "
            f"{_fmt_range(*e['range'])} ({law.get('source')}): the prediction is extrapolated",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(out))
        return 0
    c, acc = best["coordinates"], best["accounting"]
    print(f"law       {out['law']['form']}")
    print(f"          fitted on {out['law']['n_points']} points of {out['law']['source']}")
    b = out["budgets"]
    limits = [f"{b['memory_gib']:g} GiB INT4"]
    if b["gflops_per_token"] is not None:
        limits.append(f"{b['gflops_per_token']:g} GFLOPs/token @ {b['context']}")
    if b["active_params"] is not None:
        limits.append(f"{b['active_params']:,} active params")
    if b["decode_tok_s"] is not None:
        limits.append(f">= {b['decode_tok_s']:g} decode tok/s at {b['bandwidth_gbs']:g} GB/s")
    print(f"budgets   {', '.join(limits)} ({out['n_feasible']:,} of {out['n_candidates']:,} shapes fit)")
    m = best["model"]
    moe = m.get("moe")
    shape = f"d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads / {m['n_kv_heads']} KV"
    experts = (
        f"{moe['n_routed_experts']} routed experts of width {moe['expert_hidden']}, top-{moe['top_k']}, "
        f"{moe['n_shared_experts']} shared of width {moe['shared_hidden']}"
        if moe
        else f"dense, FFN {m['ffn_hidden']}"
    )
    print(
        f"best      sparsity {c['sparsity']:g}, granularity {c['granularity']:g}, "
        f"shared fraction {c['shared_fraction']:g}"
    )
    print(f"          {shape}; {experts}")
    print(
        f"          predicted loss {best['predicted_loss']:.4f} at {c['tokens']:.3g} tokens; "
        f"{acc['active_params']:,} active / {acc['total_params']:,} total params; "
        f"{acc['int4_weight_gib']:.3f} GiB INT4; {acc['flops_per_token'] / 1e9:.3f} GFLOPs/token"
        + (
            f"; ~{best['predicted_decode_tok_s']:.0f} decode tok/s"
            if "predicted_decode_tok_s" in best
            else ""
        )
    )
    if out["candidates"]:
        print("next best (each the best shape of its architecture):")
        print(
            f"  {'S':>4} {'G':>3} {'f':>5} {'d':>6} {'L':>4} {'active':>14} "
            f"{'GiB':>8} {'GFLOPs':>8} {'loss':>8}"
        )
        for cand in out["candidates"]:
            cc, ca = cand["coordinates"], cand["accounting"]
            print(
                f"  {cc['sparsity']:>4g} {cc['granularity']:>3g} {cc['shared_fraction']:>5g} "
                f"{cc['d_model']:>6} {cc['n_layers']:>4} {ca['active_params']:>14,} "
                f"{ca['int4_weight_gib']:>8.3f} {ca['flops_per_token'] / 1e9:>8.3f} "
                f"{cand['predicted_loss']:>8.4f}"
            )
    if out["extrapolated"]:
        print("extrapolated: the law was fitted at a smaller scale; treat the ranking as a hypothesis")
    return 0 if math.isfinite(best["predicted_loss"]) else 1

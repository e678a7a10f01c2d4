"""``mobilemoe arch``: parameter, FLOP and memory accounting of a configuration."""

from __future__ import annotations

import json

from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("arch", help="params, FLOPs/token, INT4/bf16 bytes, KV cache of a config")
    add_config_args(p)
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="context length for attention FLOPs (default: scaling.context)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError
    from ..model.accounting import GIB, account

    params = load_config(args)
    if args.context is not None and args.context <= 0:
        raise UserError(f"--context must be > 0, got {args.context}")
    context = args.context or params.scaling.context
    acc = account(params.model, context)
    budget = params.scaling
    fits_memory = acc.int4_weight_bytes <= budget.memory_budget_gib * GIB
    fits_compute = acc.flops_per_token <= budget.compute_budget_gflops_per_token * 1e9
    if args.json:
        out = acc.to_dict()
        out.update(fits_memory_budget=fits_memory, fits_compute_budget=fits_compute)
        print(json.dumps(out))
        return 0
    rows = [
        ("model", acc.name),
        ("total params", f"{acc.total_params:,} ({acc.total_params / 1e9:.3f} B)"),
        ("active params", f"{acc.active_params:,} ({acc.active_params / 1e6:.1f} M)"),
        ("  of which embedding", f"{acc.embedding_params:,}"),
        (f"forward FLOPs/token @ {context}", f"{acc.flops_per_token / 1e9:.3f} GFLOP"),
        ("INT4 weights (g32, fp16 scales)", f"{acc.int4_weight_bytes:,} B ({acc.int4_weight_gib:.3f} GiB)"),
        ("bf16 weights", f"{acc.bf16_weight_bytes:,} B ({acc.bf16_weight_bytes / GIB:.3f} GiB)"),
        ("KV cache / token (bf16)", f"{acc.kv_cache_bytes_per_token:,} B"),
        ("memory budget", f"{budget.memory_budget_gib} GiB: {'fits' if fits_memory else 'OVER'}"),
        (
            "compute budget",
            f"{budget.compute_budget_gflops_per_token} GFLOP/token: {'fits' if fits_compute else 'OVER'}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0

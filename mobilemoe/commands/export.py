"""``mobilemoe export``: a checkpoint as an ExecuTorch program (``model.pte``) for XNNPACK.

    mobilemoe export --checkpoint runs/qat/final --out out/export            # INT4 8da4w
    mobilemoe export --checkpoint runs/sft/final --out out/fp32 --quantize none
    mobilemoe export ... --max-seq-len 512 --json

Writes ``model.pte``, ``tokenizer.json`` and ``export_report.json`` into ``--out`` and
prints a summary of the report (sizes, delegated vs portable operators, eager-vs-program
parity, time).
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as an ExecuTorch .pte (XNNPACK, KV cache)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (the qat stage's for INT4)")
    p.add_argument(
        "--out", required=True, help="output folder for model.pte, tokenizer.json, export_report.json"
    )
    p.add_argument(
        "--quantize",
        choices=["8da4w", "none"],
        default="8da4w",
        help="8da4w: INT4 g32 weights + INT8 dynamic activations, as trained in QAT "
        "(needs a QAT checkpoint); none: fp32 (default: 8da4w)",
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="KV-cache slots of the program (default: the model's max_seq_len)",
    )
    p.add_argument(
        "--no-parity",
        action="store_true",
        help="skip running the program against the eager model after export",
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and ExecuTorch)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..errors import UserError
    from ..export import export_pte

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    report = export_pte(
        args.checkpoint,
        args.out,
        quantize=args.quantize,
        max_seq_len=args.max_seq_len,
        parity=not args.no_parity,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    for key, value in summary_rows(report, args.out):
        print(f"{key:<22}  {value}")
    return 0


def summary_rows(report: dict, out) -> list[tuple[str, str]]:
    q, ops, size = report["quantization"], report["operators"], report["size"]
    rows = [
        ("program", f"{out}/{report['program']}"),
        (
            "source",
            f"{report['source']['checkpoint']} (stage {report['source']['stage']}, "
            f"sha256 {report['source']['checkpoint_sha256'][:12]})",
        ),
        (
            "quantization",
            q["scheme"]
            if q["scheme"] == "none"
            else f"{q['scheme']} (INT4 weights group {q['group_size']}, INT8 dynamic activations)",
        ),
        ("size", f"{size['program_bytes']:,} B (fp32 weights {size['fp32_weight_bytes']:,} B)"),
        ("context", f"{report['context']['max_context_len']} tokens"),
        (
            "operators",
            f"{ops['delegated_ops']} in XNNPACK ({ops['partitions']} partitions), "
            f"{ops['portable_ops']} portable",
        ),
        ("export time", f"{report['export_s']:.1f} s"),
    ]
    parity = report.get("parity")
    if parity:
        verdict = "ok" if parity["passed"] else "FAILED"
        greedy = "identical" if parity["identical_greedy_tokens"] else "differ after a near tie"
        rows.append(
            (
                "parity",
                f"{verdict}: max |logit diff| {parity['max_abs_logit_diff']:.3g} "
                f"(tolerance {parity['tolerance']:.3g}), greedy tokens {greedy}",
            )
        )
    return rows

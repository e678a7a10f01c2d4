"""Render the tables of docs/benchmarks.md from the JSON files the benchmarks write.

    .venv/bin/python benchmarks/report.py            # rewrite the tables in docs/benchmarks.md
    .venv/bin/python benchmarks/report.py --check    # exit 1 if the page is out of date

Each benchmark script writes ``benchmarks/results/<name>.json`` with its figures, the
``machine`` and the ``date`` (``benchmarks/stamp.py``). The page holds one block per
benchmark between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->``; this script
replaces what is between them and leaves the prose around alone, so no figure in the docs
is typed by hand. A benchmark without a result file renders as "not measured yet".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def result_path(name: str) -> Optional[Path]:
    """The summary file of benchmark ``name``; ondevice_speedup also from its work folder."""
    candidates = [RESULTS / f"{name}.json"]
    if name == "ondevice_speedup":
        candidates.append(RESULTS / "ondevice_speedup" / "result.json")
    return next((p for p in candidates if p.is_file()), None)


def pairs(d: dict) -> str:
    """``{'D': 768, 'E': 60}`` as ``D 768, E 60``."""
    return ", ".join(f"{k} {v}" for k, v in d.items()) if isinstance(d, dict) else str(d)


def provenance(doc: dict, path: Path) -> str:
    """One line: which file, when and on what the figures were measured (older files lack
    some keys, and say so rather than guess)."""
    source = f"Source: `{path.relative_to(ROOT).as_posix()}`"
    machine = doc.get("machine") or {}
    cpu = machine.get("cpu") or doc.get("cpu")
    if not cpu and not doc.get("date"):
        return f"{source}; this file records neither the machine nor the date."
    parts = [cpu or "machine not recorded"]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("gpu"):
        parts.append(machine["gpu"])
    if machine.get("load_avg_1m") is not None:
        parts.append(f"load average {machine['load_avg_1m']}")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    date = doc.get("date") or "date not recorded"
    return f"{source}, measured {date} on {', '.join(parts)}."


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def render_moe_layer(d: dict) -> list[str]:
    rows = [
        [
            name,
            r["train_fwd_vs_dense"],
            r["train_fwd_bwd_vs_dense"],
            r["masked_fwd_bwd_vs_dense"],
            r["decode_eager_masked_vs_dense"],
            r.get("decode_pte_export_path_vs_dense"),
        ]
        for name, r in d["configs"].items()
    ]
    return table(
        [
            "config",
            "fwd / dense",
            "fwd+bwd / dense (target <= 1.3)",
            "all masked fwd+bwd / dense",
            "decode masked / dense",
            "decode kernel / dense (--pte)",
        ],
        rows,
    ) + ["", f"{d.get('tokens')} tokens, {d.get('threads')} thread(s), {d.get('repeats')} repeats."]


def render_train_step(d: dict) -> list[str]:
    rows = [
        [
            name,
            r["moe"]["tok_per_s"],
            r["dense_active"]["tok_per_s"],
            r["moe_tok_per_s_vs_dense"],
            r["moe"].get("mfu"),
            f"{r['moe']['active_params'] / 1e6:.1f}M / {r['moe']['total_params'] / 1e6:.1f}M",
        ]
        for name, r in d["configs"].items()
    ]
    return table(
        ["config", "MoE tok/s", "dense-active tok/s", "MoE / dense", "MoE MFU", "active / total params"], rows
    ) + ["", f"{d['device']}, {d['threads']} thread(s)."]


def render_fsdp_step(d: dict) -> list[str]:
    gb = 1e9
    rows = [
        [
            par,
            round(r["step_s"], 3),
            r["tok_per_s"],
            r.get("mfu"),
            f"{r['peak_bytes'] / gb:.2f}",
            f"{r['planned_bytes'] / gb:.2f}",
        ]
        for par, r in d["parallelisms"].items()
    ]
    lines = table(["parallelism", "step s", "tok/s", "MFU", "peak GB per rank", "plan GB per rank"], rows)
    ratio = ""
    if "fsdp_vs_ddp_step_time" in d:
        ratio = (
            f" FSDP / DDP: step time {d['fsdp_vs_ddp_step_time']:.2f}x, "
            f"peak memory {d['fsdp_vs_ddp_peak_bytes']:.2f}x."
        )
    return lines + [
        "",
        f"{d['model']} ({d['total_params'] / 1e6:.0f}M parameters), {d['nproc']} rank(s), "
        f"batch {d['batch']} x {d['seq_len']}, {d['precision']} on {d['device']}.{ratio}",
    ]


def render_eval_throughput(d: dict) -> list[str]:
    rows = [[task, ratio] for task, ratio in d["batched_vs_single_by_task"].items()]
    rows.append(["all (1 thread, CPU s)", d["batched_vs_single"]])
    if d.get("batched_vs_single_eval_threads") is not None:
        rows.append(
            [
                f"all ({d['eval_threads']} threads, wall s; target >= {d['target_batched_vs_single']})",
                d["batched_vs_single_eval_threads"],
            ]
        )
    rows.append(["generate_until", d["generate_batched_vs_single"]])
    return table(["requests", "batched / one at a time"], rows) + [
        "",
        f"{d['requests']} requests, {d['tokens']:,} tokens; batched {d['batched_req_per_s']} req/s vs "
        f"{d['single_req_per_s']} req/s on one thread; tokens through the model {d['tokens_single']:,} "
        f"one at a time vs {d['tokens_batched']:,} batched; a forward call costs "
        f"{d['forward_fixed_ms']} ms + {d['forward_us_per_token']} us per token.",
    ]


def render_moe_decode(d: dict) -> list[str]:
    rows = [
        [label, d[f"{k}_program_bytes"], d[f"{k}_prefill_tok_per_s"], d[f"{k}_decode_tok_per_s"]]
        for label, k in (("fp32", "fp32"), ("INT4 (8da4w)", "int4"))
    ]
    return table(["program", "bytes", "prefill tok/s", "decode tok/s"], rows) + [
        "",
        f"Preset `{d['preset']}`, {d['prompt_tokens']}-token prompt, {d['decode_tokens']} decoded "
        f"tokens, {d['threads']} thread; INT4 / fp32: size {d['int4_vs_fp32_size']:.3f}, decode "
        f"{d['int4_vs_fp32_decode']:.2f}x.",
    ]


def render_moe_kernel(d: dict) -> list[str]:
    rows = []
    for th, t in d["times_us"].items():
        hot = t["decode_xnnpack"]["median_us"]
        cold = t.get("decode_xnnpack_cold", {}).get("median_us")
        rows.append(
            [
                th,
                t["decode_ours"]["median_us"] / cold if cold else "-",
                t["decode_ours_hot"]["median_us"] / hot,
                t["prefill_ours"]["median_us"] / t["prefill_xnnpack"]["median_us"],
            ]
        )
    shapes = d.get("shapes", {})
    return table(
        [
            "threads",
            "decode, cold/cold (target <= 1.3)",
            "decode, hot/hot",
            "prefill (target <= 1.5)",
        ],
        rows,
    ) + [
        "",
        f"Ours / XNNPACK INT4 dense of the same active bytes; shapes {pairs(shapes)}; "
        f"ISA path {d.get('isa')}. Cold/cold: both sides cycle through weights the size of the "
        "whole MoE layer, so each call reads its bytes from memory, not cache (docs/kernels.md).",
    ]


def render_ondevice_speedup(d: dict) -> list[str]:
    line = d.get("line", d)
    rows = [
        [th, r.get("prefill_speedup"), r.get("decode_speedup"), r.get("block_decode_speedup")]
        for th, r in line["per_threads"].items()
    ]
    return table(
        [
            "threads",
            "prefill speed-up (paper 1.8-3.8)",
            "decode speed-up (paper 2.2-3.4)",
            "per-block decode",
        ],
        rows,
    ) + [
        "",
        f"Layers {pairs(line['layers'])}; bytes bound {line['bytes_bound']} (weights), "
        f"{line['bytes_bound_with_kv']} with the KV cache; MoE fallback {line['moe_fallback']}; "
        f"check: {line['check']}.",
    ]


def render_curate(d: dict) -> list[str]:
    rows = [
        ["clean + dedup", f"{d['clean_dedup_mb_per_s']} MB/s"],
        ["clean", f"{d['clean_mb_per_s']} MB/s"],
        ["exact dedup", f"{d['exact_dedup_mb_per_s']} MB/s"],
        ["near dedup", f"{d['near_dedup_mb_per_s']} MB/s"],
        ["decontamination check", f"{d['decontam_check_mb_per_s']} MB/s"],
    ]
    if "full_curation_s" in d:
        rows.append(["whole `dvc repro`, fresh copy (target < 60 s)", f"{d['full_curation_s']} s"])
        rows.append(["second `dvc repro` (nothing to do)", f"{d['noop_repro_s']} s"])
    return table(["part (one core)", "speed / time"], rows) + [
        "",
        f"{d['raw_mb']} MB of raw pre-training text, {d['clean_mb']} MB kept after cleaning.",
    ]


RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "moe_layer": render_moe_layer,
    "train_step": render_train_step,
    "fsdp_step": render_fsdp_step,
    "eval_throughput": render_eval_throughput,
    "moe_decode": render_moe_decode,
    "moe_kernel": render_moe_kernel,
    "ondevice_speedup": render_ondevice_speedup,
    "curate": render_curate,
}


def render_others() -> str:
    """Every result file without a section of its own: its scalar figures and provenance,
    so a new benchmark shows up on the page before anyone writes a renderer for it."""
    blocks = []
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem in RENDERERS:
            continue
        doc = json.loads(path.read_text())
        rows = [
            [k, v]
            for k, v in sorted(doc.items())
            if k not in {"machine", "date", "benchmark"} and isinstance(v, (int, float, str, bool))
        ]
        lines = [f"### {path.stem}", "", f"Run `python benchmarks/{path.stem}.py`; summary figures:", ""]
        lines += table(["key", "value"], rows) if rows else ["(no scalar figures at the top level)"]
        blocks.append("\n".join([*lines, "", provenance(doc, path)]))
    return "\n\n".join(blocks) if blocks else "None."


def render_block(name: str) -> str:
    if name == "others":
        return render_others()
    path = result_path(name)
    if path is None:
        return f"Not measured yet: run `python benchmarks/{name}.py`."
    doc = json.loads(path.read_text())
    return "\n".join([*RENDERERS[name](doc), "", provenance(doc, path)])


def render_page(text: str) -> str:
    """``text`` with every marked block replaced by its rendering; unknown names are errors."""

    def replace(m: re.Match) -> str:
        name = m.group(1)
        if name not in RENDERERS and name != "others":
            raise SystemExit(
                f"error: {PAGE.name}: no renderer for <!-- report:{name} -->; known: {', '.join(RENDERERS)}"
            )
        return f"<!-- report:{name} -->\n{render_block(name)}\n<!-- /report:{name} -->"

    return re.sub(r"<!-- report:(\w+) -->\n.*?<!-- /report:\1 -->", replace, text, flags=re.S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is out of date")
    args = ap.parse_args()
    text = PAGE.read_text()
    new = render_page(text)
    if args.check:
        if new != text:
            print(
                f"{PAGE.relative_to(ROOT)} is out of date: run python benchmarks/report.py", file=sys.stderr
            )
            return 1
        return 0
    PAGE.write_text(new)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``export_pte``: a checkpoint in, ``model.pte`` + ``tokenizer.json`` + ``export_report.json`` out.

    report = export_pte("runs/qat/final", "out/export")                 # INT4 8da4w (QAT)
    report = export_pte("runs/sft/final", "out/fp32", quantize="none")  # fp32 program

Runs the chain of :mod:`mobilemoe.export.program`, then loads the written program with the
ExecuTorch runtime and checks it against the eager model (:mod:`mobilemoe.export.parity`).
Files are written atomically (:func:`mobilemoe.io.write_bytes_atomic`); the old report is
removed first and the new one written last, so a folder with ``export_report.json`` holds
a complete export that matches it. Other files in the folder are never touched.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import sha256_file
from ..hf.tokenizer import with_bos
from ..io import write_bytes_atomic
from .program import (
    ExportError,
    export_program,
    load_source,
    lower,
    operator_report,
    program_metadata,
    to_executorch,
)

PTE, TOKENIZER, REPORT = "model.pte", "tokenizer.json", "export_report.json"
REPORT_FORMAT = 1
PARITY_PROMPTS, PARITY_NEW_TOKENS = 3, 16  # a quick check at export; the tests run 5 x 32


def export_pte(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quantize: str = "8da4w",
    max_seq_len: Optional[int] = None,
    parity: bool = True,
    threads: Optional[int] = None,
    ptq=None,
) -> dict:
    """Export a checkpoint; returns the report (also written to ``export_report.json``).

    ``quantize``: "8da4w" (needs a QAT checkpoint) or "none" (fp32). ``max_seq_len``: KV-cache
    slots of the program (default: the model's ``max_seq_len``). ``parity``: run the written
    program against the eager model and record the numbers (seconds for small models).
    ``threads``: ExecuTorch's thread pool size for that check (default: left as it is).
    ``ptq``: a QAT spec to quantize a float checkpoint after training (speed baselines;
    see :func:`mobilemoe.export.program.load_source`).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    src = load_source(checkpoint_dir, quantize, ptq=ptq)
    cfg = src.model.cfg
    context = max_seq_len or cfg.max_seq_len
    if not 2 <= context <= cfg.max_seq_len:
        raise ExportError(
            f"max_seq_len: {context} must be in [2, model.max_seq_len="
            f"{cfg.max_seq_len}] (RoPE and training stop there)"
        )
    timings = {}
    t = time.perf_counter()
    exported = export_program(src.model, context)
    timings["torch_export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    edge = lower(exported, program_metadata(src, context))
    timings["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    program = to_executorch(edge)
    pte_bytes = program.buffer
    timings["serialize_s"] = time.perf_counter() - t
    ops = operator_report(program)
    moe = moe_summary(src.model, ops)
    export_s = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    # The report goes first and comes back last: a folder with a report holds a complete,
    # matching export, even if this one is interrupted half-way.
    (out / REPORT).unlink(missing_ok=True)
    write_bytes_atomic(out / PTE, pte_bytes)
    # The training tokenizer plus the usual BOS post-processor: ExecuTorch's TextLLMRunner
    # (num_bos=1) and AutoTokenizer then add exactly one <|bos|> (mobilemoe.hf.tokenizer).
    write_bytes_atomic(out / TOKENIZER, with_bos(src.tokenizer.read_text()).encode())
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "program": PTE,
        "program_bytes": len(pte_bytes),
        "program_sha256": sha256_file(out / PTE),
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": sha256_file(out / TOKENIZER),
        "quantization": {
            "scheme": src.quantize,
            "group_size": src.group_size,
            "post_training": bool(src.config.get("ptq")),
            "quantize_embedding": bool(src.qat and src.qat.quantize_embedding),
            # XNNPACK keeps INT4 group scales in bf16 (the paper says fp16);
            # the MoE kernel's experts keep fp16 scales
            "weight_scale_dtype": ("bf16 (XNNPACK linears), fp16 (MoE kernel experts)" if src.qat else None),
        },
        "source": {
            "checkpoint": str(src.checkpoint),
            "checkpoint_sha256": src.checkpoint_sha256,
            "stage": src.stage,
            "step": src.config.get("step"),
            "model": src.config.get("model", {}).get("name"),
        },
        "context": {"max_seq_len": context, "max_context_len": context},
        "metadata": program_metadata(src, context),
        "size": {"program_bytes": len(pte_bytes), **_accounted_bytes(cfg)},
        "operators": ops,
        "moe": moe,
        "export_s": export_s,
        "timings": timings,
        "versions": _versions(),
    }
    if parity:
        from .parity import greedy_parity, sample_prompts
        from .runtime import PteModel

        t = time.perf_counter()
        pte = PteModel(out / PTE, out / TOKENIZER, threads=threads)
        n_new = min(PARITY_NEW_TOKENS, context // 2)  # prompt + new tokens fit the context
        prompts = [p[: context - n_new] for p in sample_prompts(pte.tokenizer, PARITY_PROMPTS)]
        report["parity"] = greedy_parity(src.model, pte, prompts, n_new, src.quantize)
        report["parity"]["program_executions"] = pte.executions
        timings["parity_s"] = time.perf_counter() - t
    write_bytes_atomic(out / REPORT, json.dumps(report, indent=1, sort_keys=True).encode())
    return report


def moe_summary(model, ops: dict) -> dict:
    """MoE layers of the model vs the layers whose program calls the top-k kernel.

    ``moe_fallback`` is true if any MoE layer's routed experts run without the kernel
    (that is, all experts for every token): such a program must not ship.
    """
    cfg = model.cfg
    moe_layers = [f"layer.{i}" for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    kernel_layers = set(ops.get("moe", {}).get("kernel_layers", []))
    fallback = [name for name in moe_layers if name not in kernel_layers]
    return {
        "moe_layers": moe_layers,
        "kernel_layers": sorted(kernel_layers & set(moe_layers), key=lambda n: int(n.split(".")[1])),
        "fallback_layers": fallback,
        "moe_fallback": bool(fallback),
        "kernel": "mmoe::moe_ffn_8da4w"
        if any("moe_ffn_8da4w" in c for c in ops.get("moe", {}).get("kernel_calls", {}).values())
        else ("mmoe::moe_ffn_f32" if kernel_layers else None),
    }


def _accounted_bytes(cfg) -> dict:
    """Weight bytes by the accounting module's formulas, to set the program size against."""
    from ..model.accounting import account

    acc = account(cfg, cfg.max_seq_len)
    return {
        "fp32_weight_bytes": int(acc.total_params * 4),
        "int4_weight_bytes_accounted": int(acc.int4_weight_bytes),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Optional[str]] = {}
    for pkg in ("torch", "executorch", "torchao"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out

"""Exported MobileMoE programs: INT4 (8da4w) vs fp32 size and decode speed, side by side.

Builds a preset's model (random init; the QAT checkpoint is the same weights prepared for
QAT, so both programs hold the same model), exports it twice with ``export_pte``
(``quantize="8da4w"`` and ``"none"``), then in this one process, 1 thread, interleaved
repeats: prefill of a ``--prompt``-token prompt and greedy decode of ``--decode`` tokens
through ``PteModel`` (ExecuTorch runtime, XNNPACK). Medians are reported; ratios are
INT4 over fp32. Prints a table and, last, one JSON line; writes
benchmarks/results/moe_decode.json (with the machine and date).

    .venv/bin/python benchmarks/moe_decode.py [--preset tiny] [--repeats 5] [--decode 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp import write_result  # noqa: E402

from mobilemoe.checkpoint import save_checkpoint  # noqa: E402
from mobilemoe.config import load_preset  # noqa: E402
from mobilemoe.export import PteModel, export_pte, set_runtime_threads  # noqa: E402
from mobilemoe.model import build_model  # noqa: E402
from mobilemoe.quant import prepare_qat  # noqa: E402


def _tokenizer(vocab_size: int, folder: Path) -> Path:
    from pydoc_data.topics import topics

    from mobilemoe.data.tokenizer import train_tokenizer

    path = folder / "tokenizer.json"
    train_tokenizer(list(topics.values()), vocab_size).save(str(path))
    return path


def _checkpoints(preset: str, folder: Path) -> tuple[Path, Path]:
    params = load_preset(preset)
    tok = _tokenizer(params.model.vocab_size, folder)
    torch.manual_seed(0)
    model = build_model(params.model)
    save_checkpoint(folder / "fp32", model, {"stage": "sft", "qat": None}, tokenizer=tok)
    prepare_qat(model, params.qat)
    qat = {
        "scheme": params.qat.scheme,
        "group_size": params.qat.group_size,
        "quantize_embedding": params.qat.quantize_embedding,
    }
    save_checkpoint(folder / "qat", model, {"stage": "qat", "qat": qat}, tokenizer=tok)
    return folder / "fp32", folder / "qat"


def _decode_run(pte: PteModel, prompt: list[int], n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    logits = pte.logits(prompt)[-1]
    t1 = time.perf_counter()
    token = int(logits.argmax())
    for i in range(n):
        token = int(pte.forward([token], len(prompt) + i)[-1].argmax())
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n / (t2 - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--decode", type=int, default=64, help="decoded tokens per run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    set_runtime_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32_ckpt, qat_ckpt = _checkpoints(args.preset, folder)
        reports = {
            "int4": export_pte(qat_ckpt, folder / "int4", quantize="8da4w", threads=1),
            "fp32": export_pte(fp32_ckpt, folder / "fp32_pte", quantize="none", threads=1),
        }
        ptes = {
            "int4": PteModel(folder / "int4" / "model.pte"),
            "fp32": PteModel(folder / "fp32_pte" / "model.pte"),
        }
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(6, ptes["fp32"].vocab_size, (args.prompt,), generator=gen).tolist()
        runs = {k: {"prefill": [], "decode": []} for k in ptes}
        for pte in ptes.values():  # warm-up
            _decode_run(pte, prompt, 4)
        for _ in range(args.repeats):
            for k, pte in ptes.items():  # interleaved: both see the same machine load
                prefill, decode = _decode_run(pte, prompt, args.decode)
                runs[k]["prefill"].append(prefill)
                runs[k]["decode"].append(decode)

    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in runs.items()}
    size = {k: reports[k]["size"]["program_bytes"] for k in reports}
    result = {
        "preset": args.preset,
        "threads": 1,
        "prompt_tokens": args.prompt,
        "decode_tokens": args.decode,
        "repeats": args.repeats,
        "int4_program_bytes": size["int4"],
        "fp32_program_bytes": size["fp32"],
        "int4_vs_fp32_size": size["int4"] / size["fp32"],
        "int4_decode_tok_per_s": med["int4"]["decode"],
        "fp32_decode_tok_per_s": med["fp32"]["decode"],
        "int4_vs_fp32_decode": med["int4"]["decode"] / med["fp32"]["decode"],
        "int4_prefill_tok_per_s": med["int4"]["prefill"],
        "fp32_prefill_tok_per_s": med["fp32"]["prefill"],
        "export_s": {k: reports[k]["export_s"] for k in reports},
        "partitions": {k: reports[k]["operators"]["partitions"] for k in reports},
        "parity_max_abs_logit_diff": {k: reports[k]["parity"]["max_abs_logit_diff"] for k in reports},
    }
    print(f"{'program':<8} {'bytes':>12} {'prefill tok/s':>14} {'decode tok/s':>13} {'export s':>9}")
    for k in ("fp32", "int4"):
        print(
            f"{k:<8} {size[k]:>12,} {med[k]['prefill']:>14.0f} {med[k]['decode']:>13.0f} "
            f"{reports[k]['export_s']:>9.1f}"
        )
    print(f"INT4/fp32: size {result['int4_vs_fp32_size']:.3f}, decode {result['int4_vs_fp32_decode']:.2f}x")
    write_result("moe_decode", result)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()

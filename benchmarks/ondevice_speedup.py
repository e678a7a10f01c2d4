"""The paper's on-device claim side by side: MobileMoE-S vs the dense MobileLLM-Pro, INT4 programs.

    .venv/bin/python benchmarks/ondevice_speedup.py --layers 4 --threads 1    # quick look
    .venv/bin/python benchmarks/ondevice_speedup.py --threads 1,2             # full depth

Both models are built at their presets' true shapes (``presets/mobilemoe-s.yaml``,
``presets/dense-mobilellm-pro.yaml``) with random weights (speed does not depend on
training), converted to the deployment format (``convert_qat``: INT4 g32 weights, INT8
dynamic activations; MoE experts packed for mobilemoe's top-k kernel) and exported by the
project's own export chain with ``max_seq_len`` 2048 (same KV-cache dtype, fp32, in both).
``--layers N`` cuts both to N blocks (embedding and LM head kept). Each export runs in a
child process, one model at a time (the machine's memory); its peak RSS and time are
printed. Programs are cached in ``--work`` by their settings and a fingerprint of the
export code (a program exported by older code is exported again).

Then both are profiled through the device lab's ``local-cpu`` backend (the job protocol the
flow's ``device_profile`` step uses; this benchmark's runner has its own job budget,
``--job-timeout-s``), one job per model per round, the two models alternating within
each round (interleaved repeats); medians over rounds, with min and max.

Printed: INT4 weight bytes of each program (and ``mobilemoe arch``'s count), prefill tok/s
at each prompt length, decode tok/s, peak RSS, the MoE/dense ratios, and the bytes bound:
the dense program's weight bytes read per decoded token over the MoE's (attention, router
in fp32 as the program stores it, shared expert, the top-k routed experts, LM head, norms
and one embedding row, all INT4 g32 with fp16 scales;
``mobilemoe.model.accounting.decode_bytes``). ``bytes_bound_with_kv`` adds the KV cache
read per token: our attention (``mmoe::attend_kv``) reads only the slots a query may see,
p + 1 at position p (at most the window in a sliding-window layer), so that is
2 x kv_heads x head_dim x slots x 4 B per layer at the measured decode position (the
middle of the decode after the median prompt length). With
``--block-depth M`` (default: half the depth, at least 1) both models are also exported at M
blocks; ``block_decode_speedup`` is the ratio of the per-block decode times
(t(N) - t(M)) / (N - M), so the share of the embedding/LM head is visible.

The last line is one JSON object: ``decode_speedup``, ``prefill_speedup`` (128 tokens),
``bytes_bound``, ``bytes_bound_with_kv``, ``layers``, ``threads``, ``moe_fallback``,
``block_decode_speedup`` (for the first thread count) and ``per_threads``. The check
(exit 1 if it fails): ``moe_fallback`` false; and at full depth ``decode_speedup`` >= 2.2
and ``prefill_speedup`` >= 1.8 (the paper's lower bounds), with ``--layers`` N < full
``decode_speedup`` >= 0.7 x ``bytes_bound`` and ``prefill_speedup`` >= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_WORK = str(ROOT / "benchmarks" / "results" / "ondevice_speedup")  # exports and raw runs

MOE, DENSE = "mobilemoe-s", "dense-mobilellm-pro"
MAX_SEQ_LEN = 2048  # both programs: export.max_seq_len of both presets
PAPER_DECODE, PAPER_PREFILL = 2.2, 1.8  # docs/paper.md: decode 2.2-3.4x, prefill 1.8-3.8x
QUICK_DECODE_OF_BOUND, QUICK_PREFILL = 0.7, 1.2  # quick-look targets (--layers N)


# -- bytes read per decoded token --------------------------------------------------------


def bytes_per_token(cfg, position: int) -> dict:
    """INT4 weight bytes a decoded token reads, and the fp32 KV bytes our attention reads at ``position``."""
    from mobilemoe.model.accounting import decode_bytes, kv_read_bytes

    d = decode_bytes(cfg, MAX_SEQ_LEN)
    return {"weights": d.active_weight_bytes, "kv": kv_read_bytes(cfg, position)}


def export_fingerprint() -> str:
    """Hash of the code that decides what a program contains (model, quantization, export, op schemas)."""
    import hashlib

    h = hashlib.sha256()
    for folder in ("mobilemoe/model", "mobilemoe/quant", "mobilemoe/export", "mobilemoe_kernels"):
        for path in sorted((ROOT / folder).glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


# -- export (child process) ----------------------------------------------------------------


def model_config(preset: str, layers: int | None):
    from mobilemoe.config import load_preset

    overrides = [f"model.n_layers={layers}"] if layers else []
    return load_preset(preset, overrides)


def export_one(preset: str, layers: int | None, out: Path) -> dict:
    """Build, convert and export one model; runs in its own process (peak RSS is its own)."""
    import torch

    from mobilemoe.export.pipeline import moe_summary
    from mobilemoe.export.program import (
        export_program,
        lower,
        operator_report,
        runner_metadata,
        to_executorch,
    )
    from mobilemoe.model import build_model
    from mobilemoe.model.accounting import account
    from mobilemoe.quant import convert_qat

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    params = model_config(preset, layers)
    cfg = params.model
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model = convert_qat(model, params.qat)
    t_build = time.perf_counter() - t0
    metadata = runner_metadata(cfg, MAX_SEQ_LEN)
    with torch.no_grad():
        exported = export_program(model, MAX_SEQ_LEN)
    program = to_executorch(lower(exported, metadata))
    del exported
    ops = operator_report(program)
    moe = moe_summary(model, ops)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(program.buffer)
    os.replace(tmp, out)
    return {
        "preset": preset,
        "layers": cfg.n_layers,
        "program_bytes": out.stat().st_size,
        "arch_int4_weight_bytes": int(account(cfg, MAX_SEQ_LEN).int4_weight_bytes),
        "moe": moe,
        "portable_by_op": ops["portable_by_op"],
        "build_convert_s": t_build,
        "export_s": time.perf_counter() - t0,
        "fingerprint": export_fingerprint(),
        "export_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def ensure_program(work: Path, preset: str, layers: int | None, full_layers: int) -> dict:
    n = layers or full_layers
    pte = work / f"{preset}-L{n}.pte"
    info_path = pte.with_suffix(".json")
    if pte.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("fingerprint") == export_fingerprint():
            info["cached"] = True
            return info
        print(f"{pte.name} was exported by other code: exporting it again", flush=True)
    print(f"exporting {preset} at {n} blocks ...", flush=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--export-one", preset, "--layers", str(n), "--work", str(work)], cwd=ROOT
    )
    if proc.returncode != 0 or not info_path.exists():
        raise SystemExit(
            f"error: exporting {preset} at {n} blocks failed (exit {proc.returncode}); "
            "if it ran out of memory, try a smaller --layers"
        )
    info = json.loads(info_path.read_text())
    print(
        f"  {pte.name}: {info['program_bytes'] / 2**20:,.0f} MiB in {info['export_s']:.0f} s, "
        f"peak RSS {info['export_peak_rss_bytes'] / 2**30:.1f} GiB",
        flush=True,
    )
    return info


# -- profiling through the device lab -------------------------------------------------------


def tokenizer(work: Path) -> Path:
    path = work / "tokenizer.json"
    if not path.exists():
        from pydoc_data.topics import topics

        from mobilemoe.data.tokenizer import train_tokenizer

        train_tokenizer(list(topics.values()), 4096).save(str(path))
    return path


def profile(
    work: Path, programs: dict[str, Path], tok: Path, bench: dict, rounds: int, job_timeout_s: float
) -> dict[str, list[dict]]:
    """Interleaved rounds of one local-cpu job per program; {name: [result, ...]}."""
    from device_lab.backends import make_backend
    from device_lab.queue import Queue
    from device_lab.runner import Runner
    from device_lab.submit import submit_job, wait_for_result
    from device_lab.transport import open_transport

    qdir = work / f"queue-{os.getpid()}-{int(time.time())}"
    queue = Queue(open_transport(f"file://{qdir}"))
    biggest = max(p.stat().st_size for p in programs.values())
    runner = Runner(
        queue,
        [make_backend("local-cpu")],
        work / "runner",
        poll_s=0.2,
        job_timeout_s=job_timeout_s,
        max_artifact_bytes=2 * biggest + 2**20,
    )
    stop = threading.Event()
    thread = threading.Thread(target=lambda: runner.serve(stop), daemon=True)
    thread.start()
    out: dict[str, list[dict]] = {name: [] for name in programs}
    try:
        for r in range(rounds):
            order = list(programs) if r % 2 == 0 else list(reversed(programs))
            for name in order:
                job = submit_job(
                    queue,
                    programs[name],
                    tok,
                    bench,
                    deadline_s=job_timeout_s + 600,
                    labels={"benchmark": "ondevice_speedup", "model": name},
                )
                result = wait_for_result(
                    queue,
                    job,
                    timeout_s=job_timeout_s + 120,
                    poll_s=0.5,
                    should_stop=lambda: not thread.is_alive(),
                )
                if result is None or result.get("status") != "ok":
                    reason = (result or {}).get("reason", "no result in time")
                    raise SystemExit(f"error: profiling {name} failed: {reason}")
                out[name].append(result)
                m = result
                print(
                    f"  round {r + 1}/{rounds} {name:<22} decode {m['decode_tok_per_s']:7.2f} tok/s  "
                    "prefill " + " ".join(f"{k}:{v:.1f}" for k, v in m["prefill_tok_per_s"].items()),
                    flush=True,
                )
    finally:
        stop.set()
        thread.join(timeout=60)
    return out


def _stat(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], prompts: list[int]) -> dict:
    return {
        "decode_tok_per_s": _stat([r["decode_tok_per_s"] for r in runs]),
        "prefill_tok_per_s": {str(n): _stat([r["prefill_tok_per_s"][str(n)] for r in runs]) for n in prompts},
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=None, help="blocks of both models (default: full)")
    ap.add_argument(
        "--block-depth",
        type=int,
        default=None,
        help="second depth for the per-block ratio (default: half of --layers)",
    )
    ap.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    ap.add_argument("--prompts", default="64,128,256")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats per thread count")
    ap.add_argument(
        "--job-timeout-s",
        type=float,
        default=3600.0,
        help="this benchmark's device-lab job budget (full depth needs more than the runner's default)",
    )
    ap.add_argument("--work", default=DEFAULT_WORK)
    ap.add_argument("--export-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("USERNAME", "mobilemoe")

    if args.export_one:  # child: export one model
        os.environ.setdefault("OMP_NUM_THREADS", "2")
        pte = work / f"{args.export_one}-L{args.layers}.pte"
        info = export_one(args.export_one, args.layers, pte)
        pte.with_suffix(".json").write_text(json.dumps(info, indent=1))
        return 0

    threads = [int(t) for t in args.threads.split(",")]
    prompts = [int(p) for p in args.prompts.split(",")]
    full = {p: model_config(p, None).model.n_layers for p in (MOE, DENSE)}
    if args.layers is not None and not 1 <= args.layers:
        ap.error("--layers must be >= 1")
    layers = args.layers
    depth = {p: min(layers, full[p]) if layers else full[p] for p in (MOE, DENSE)}
    block = args.block_depth if args.block_depth is not None else max(1, min(depth.values()) // 2)
    if not 1 <= block < min(depth.values()):
        ap.error(f"--block-depth must be in [1, {min(depth.values())})")

    info = {p: ensure_program(work, p, depth[p], full[p]) for p in (MOE, DENSE)}
    info_b = {p: ensure_program(work, p, block, full[p]) for p in (MOE, DENSE)}
    moe_fallback = any(i["moe"]["moe_fallback"] for i in (info[MOE], info_b[MOE]))
    tok = tokenizer(work)
    decode_pos = int(statistics.median(prompts)) + args.decode_tokens // 2
    bpt = {p: bytes_per_token(model_config(p, depth[p]).model, decode_pos) for p in (MOE, DENSE)}
    bytes_bound = bpt[DENSE]["weights"] / bpt[MOE]["weights"]
    bytes_bound_kv = (bpt[DENSE]["weights"] + bpt[DENSE]["kv"]) / (bpt[MOE]["weights"] + bpt[MOE]["kv"])

    per_threads = {}
    for t in threads:
        bench = {
            "prompt_lengths": prompts,
            "decode_tokens": args.decode_tokens,
            "repeats": 1,
            "warmup": 1,
            "threads": t,
        }
        print(f"profiling at {t} thread(s), {args.rounds} interleaved rounds ...", flush=True)
        programs = {p: work / f"{p}-L{depth[p]}.pte" for p in (MOE, DENSE)}
        programs.update({f"{p}@{block}": work / f"{p}-L{block}.pte" for p in (MOE, DENSE)})
        runs = profile(work, programs, tok, bench, args.rounds, args.job_timeout_s)
        s = {name: summarize(r, prompts) for name, r in runs.items()}
        dec = {p: s[p]["decode_tok_per_s"]["median"] for p in (MOE, DENSE)}
        pre = {
            p: s[p]["prefill_tok_per_s"]["128" if 128 in prompts else str(prompts[0])]["median"]
            for p in (MOE, DENSE)
        }
        per_block = {}
        for p in (MOE, DENSE):
            t_n = 1 / dec[p]
            t_m = 1 / s[f"{p}@{block}"]["decode_tok_per_s"]["median"]
            per_block[p] = (t_n - t_m) / (depth[p] - block)
        per_threads[str(t)] = {
            "decode_speedup": dec[MOE] / dec[DENSE],
            "prefill_speedup": pre[MOE] / pre[DENSE],
            "prefill_speedup_by_prompt": {
                str(n): s[MOE]["prefill_tok_per_s"][str(n)]["median"]
                / s[DENSE]["prefill_tok_per_s"][str(n)]["median"]
                for n in prompts
            },
            "block_decode_speedup": per_block[DENSE] / per_block[MOE],
            "summary": s,
        }

    # -- report --
    print()
    print(f"{'':<34}{MOE:>22}{DENSE:>22}")
    print(f"{'blocks':<34}{depth[MOE]:>22}{depth[DENSE]:>22}")
    print(f"{'program bytes (.pte)':<34}{info[MOE]['program_bytes']:>22,}{info[DENSE]['program_bytes']:>22,}")
    print(
        f"{'INT4 weight bytes (mobilemoe arch)':<34}{info[MOE]['arch_int4_weight_bytes']:>22,}"
        f"{info[DENSE]['arch_int4_weight_bytes']:>22,}"
    )
    print(
        f"{'INT4 bytes read per decoded token':<34}"
        f"{bpt[MOE]['weights']:>22,.0f}{bpt[DENSE]['weights']:>22,.0f}"
    )
    print(f"{'KV bytes read per decoded token':<34}{bpt[MOE]['kv']:>22,.0f}{bpt[DENSE]['kv']:>22,.0f}")
    print(
        f"{'export time (s) / peak RSS (GiB)':<34}"
        + "".join(
            f"{info[p]['export_s']:>14.0f} / {info[p]['export_peak_rss_bytes'] / 2**30:>4.1f}"
            for p in (MOE, DENSE)
        )
    )
    for t, r in per_threads.items():
        s = r["summary"]
        print(f"-- {t} thread(s): medians of {args.rounds} interleaved rounds [min, max]")
        for n in prompts:
            cells = "".join(
                f"{s[p]['prefill_tok_per_s'][str(n)]['median']:>12.1f} "
                f"[{s[p]['prefill_tok_per_s'][str(n)]['min']:.0f},{s[p]['prefill_tok_per_s'][str(n)]['max']:.0f}]".rjust(
                    22
                )
                for p in (MOE, DENSE)
            )
            print(f"{f'prefill tok/s @ {n}':<34}{cells}   x{r['prefill_speedup_by_prompt'][str(n)]:.2f}")
        cells = "".join(
            f"{s[p]['decode_tok_per_s']['median']:>10.2f} "
            f"[{s[p]['decode_tok_per_s']['min']:.2f},{s[p]['decode_tok_per_s']['max']:.2f}]".rjust(22)
            for p in (MOE, DENSE)
        )
        print(f"{'decode tok/s':<34}{cells}   x{r['decode_speedup']:.2f}")
        print(
            f"{'peak RSS (GiB)':<34}"
            + "".join(f"{s[p]['peak_rss_bytes'] / 2**30:>22.2f}" for p in (MOE, DENSE))
        )
        print(
            f"{'per-block decode ratio':<34}{r['block_decode_speedup']:>22.2f}"
            f"  (depths {block} and {depth[MOE]}/{depth[DENSE]})"
        )
    print(
        f"bytes bound {bytes_bound:.2f} (weights), {bytes_bound_kv:.2f} with the KV cache read "
        f"(the slots a query at position {decode_pos} sees); moe_fallback: {moe_fallback}"
    )

    first = per_threads[str(threads[0])]
    is_full = all(depth[p] == full[p] for p in (MOE, DENSE))
    if is_full:
        ok = first["decode_speedup"] >= PAPER_DECODE and first["prefill_speedup"] >= PAPER_PREFILL
    else:
        ok = (
            first["decode_speedup"] >= QUICK_DECODE_OF_BOUND * bytes_bound
            and first["prefill_speedup"] >= QUICK_PREFILL
        )
    ok = ok and not moe_fallback
    line = {
        "decode_speedup": round(first["decode_speedup"], 3),
        "prefill_speedup": round(first["prefill_speedup"], 3),
        "bytes_bound": round(bytes_bound, 3),
        "bytes_bound_with_kv": round(bytes_bound_kv, 3),
        "kv_position": decode_pos,
        "layers": depth[MOE] if depth[MOE] == depth[DENSE] else depth,
        "threads": threads[0],
        "moe_fallback": moe_fallback,
        "block_decode_speedup": round(first["block_decode_speedup"], 3),
        "per_threads": {
            t: {k: round(v, 3) for k, v in r.items() if isinstance(v, float)} for t, r in per_threads.items()
        },
        "check": "pass" if ok else "fail",
    }
    result = {"line": line, "per_threads": per_threads, "exports": {"main": info, "block": info_b}}
    (work / "result.json").write_text(json.dumps(result, indent=1))
    if args.work == DEFAULT_WORK:  # the summary docs/benchmarks.md renders, with machine and date
        from stamp import write_result

        write_result("ondevice_speedup", result)
    print(json.dumps(line))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

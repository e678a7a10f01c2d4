"""lm-eval loglikelihood requests/s of the ``mobilemoe`` model: batched vs one at a time.

The tiny preset's model (random init: speed does not depend on the weights) with a real
BPE tokenizer, scoring REAL requests: the first documents of the tiny preset's tasks, as
our lm-eval tasks make them. Measured side by side in one process, 1 thread, interleaved
repeats (median of CPU seconds of this process). Also times greedy ``generate_until``
batched vs one at a time.

"One at a time" is our model at ``batch_size=1``: one forward pass per request, nothing
shared. "Batched" packs the distinct inputs of many requests as prefix trees into rows of
the model's window (``mobilemoe.eval.scoring``): a context shared by a question's k
answers, or the common start of two inputs, is computed once, and short requests fill a
row instead of padding it. On one CPU thread the tiny model is compute-bound beyond a few
dozen tokens (the table's last lines print its fixed cost per forward call and its cost
per token), so batching removes the per-call overhead and the repeated tokens, not the
rest: the ratio is highest on short multiple-choice requests and lowest on long ones
(BoolQ passages, whose two answers share one input either way).

The per-task table is measured on one thread (``--threads``). Then the whole request set
is timed again with the threads the ``eval`` step really uses (the tiny preset's
``runtime.threads``, 2; ``--eval-threads``), in WALL seconds, since CPU time cannot show
what a second thread gains: large batched matmuls use both cores, one small forward
after another mostly cannot.

Prints the tables and, last, one JSON line: ``batched_vs_single`` (one thread, CPU time)
and ``batched_vs_single_eval_threads`` (the eval's threads, wall time); issue target >= 5.
Also writes benchmarks/results/eval_throughput.json (with the machine and date).

    .venv/bin/python benchmarks/eval_throughput.py [--docs 25] [--repeats 3] [--batch-size 16]
        [--threads 1] [--eval-threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from stamp import write_result  # noqa: E402


def make_checkpoint(folder: Path) -> Path:
    from pydoc_data.topics import topics

    from mobilemoe.checkpoint import save_checkpoint
    from mobilemoe.config import load_preset
    from mobilemoe.data.tokenizer import train_tokenizer
    from mobilemoe.model import build_model

    cfg = load_preset("tiny").model
    tok = folder / "tokenizer.json"
    train_tokenizer(list(topics.values()), cfg.vocab_size).save(str(tok))
    torch.manual_seed(0)
    ckpt = folder / "tiny-init"
    save_checkpoint(ckpt, build_model(cfg), {"stage": "init", "step": 0, "qat": None}, tokenizer=tok)
    return ckpt


def real_requests(tasks: list[str], docs: int) -> dict[str, list]:
    """Per task, the requests our lm-eval tasks build for their first ``docs`` documents."""
    from mobilemoe.eval.suite import task_manager

    loaded = task_manager().load(tasks)["tasks"]
    out = {}
    for name in tasks:
        task = loaded[name]
        task.set_config(key="num_fewshot", value=0)
        task.build_all_requests(limit=docs)
        out[name] = task.instances
    return out


def computed_tokens(lm, reqs) -> tuple[int, int]:
    """(tokens one at a time computes, tokens the packed prefix trees compute)."""
    from mobilemoe.eval.scoring import continuation_windows, pack_prefix_trees, row_nodes

    windows = [
        w for r in reqs for w in continuation_windows(*lm._encode_pair_or_empty(*r.args), lm.max_length)[0]
    ]
    rows = pack_prefix_trees({w.inp for w in windows}, lm.max_length)
    return sum(len(w.inp) for w in windows), sum(row_nodes(row) for row in rows)


def forward_costs(model, repeats: int = 5) -> tuple[float, float]:
    """(fixed ms per forward call, us per token at 16 x 128) of the bare model."""

    def cpu(x):
        with torch.inference_mode():
            model(x)
            t0 = time.process_time()
            for _ in range(repeats):
                model(x)
            return (time.process_time() - t0) / repeats

    one = cpu(torch.randint(6, model.cfg.vocab_size, (1, 1)))
    big = cpu(torch.randint(6, model.cfg.vocab_size, (16, 128)))
    return one * 1e3, (big - one) / (16 * 128) * 1e6


def timed(fn) -> float:
    """CPU seconds of this process: with one thread on a machine shared with other work,
    wall time mostly measures the neighbours; the process's CPU time measures us."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=25, help="documents per task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="threads of the per-task table")
    ap.add_argument(
        "--eval-threads",
        type=int,
        default=None,
        help="threads of the wall-time line (default: the tiny preset's runtime.threads)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mobilemoe.config import load_preset
    from mobilemoe.eval.lm_model import MobileMoELM

    eval_threads = args.eval_threads or load_preset("tiny").runtime.threads

    tasks = load_preset("tiny").eval.tasks
    with tempfile.TemporaryDirectory() as tmp:
        lm = MobileMoELM(checkpoint=str(make_checkpoint(Path(tmp))), device="cpu")
    by_task = real_requests(tasks, args.docs)
    reqs = [r for rs in by_task.values() for r in rs]
    tokens = {t: sum(len(lm.tok_encode(c + x)) for c, x in (r.args for r in rs)) for t, rs in by_task.items()}
    gen = [
        type(reqs[0])(
            request_type="generate_until",
            doc={},
            idx=0,
            metadata=("gen", i, 1),
            arguments=(r.args[0], {"until": ["\n\n"], "max_gen_toks": 32}),
        )
        for i, r in enumerate(reqs[:: max(1, len(reqs) // 32)][:32])
    ]

    def score(rs, bs):
        def run():
            lm.batch_size = bs
            lm.loglikelihood(rs, disable_tqdm=True)

        return run

    def generate(bs):
        def run():
            lm.batch_size = bs
            lm.generate_until(gen, disable_tqdm=True)

        return run

    timed(score(reqs, args.batch_size))  # warm-up (allocator, first-call overheads)
    fixed_ms, per_token_us = forward_costs(lm.model)
    ll = {t: {"batched": [], "single": []} for t in tasks}
    gn = {"batched": [], "single": []}
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both
        for t in tasks:
            ll[t]["batched"].append(timed(score(by_task[t], args.batch_size)))
            ll[t]["single"].append(timed(score(by_task[t], 1)))
        gn["batched"].append(timed(generate(args.batch_size)))
        gn["single"].append(timed(generate(1)))
    wall = {"batched": [], "single": []}
    if eval_threads != args.threads:  # the whole set, as the eval step runs it
        torch.set_num_threads(eval_threads)
        for _ in range(args.repeats):
            for kind, bs in (("batched", args.batch_size), ("single", 1)):
                t0 = time.perf_counter()
                score(reqs, bs)()
                wall[kind].append(time.perf_counter() - t0)
        torch.set_num_threads(args.threads)
    wmed = {k: statistics.median(v) for k, v in wall.items() if v}
    med = {t: {k: statistics.median(v) for k, v in m.items()} for t, m in ll.items()}
    total = {k: sum(med[t][k] for t in tasks) for k in ("batched", "single")}
    gmed = {k: statistics.median(v) for k, v in gn.items()}
    print(
        f"tiny model, {len(reqs)} loglikelihood requests ({sum(tokens.values()):,} tokens) from "
        f"{len(tasks)} tasks ({args.docs} docs each); {args.threads} thread(s), batch size "
        f"{args.batch_size} vs 1, median CPU seconds of {args.repeats} interleaved repeats"
    )
    print(f"{'task':<16}{'requests':>9}{'tok/req':>8}{'batched req/s':>15}{'single req/s':>14}{'ratio':>7}")
    for t in tasks:
        n = len(by_task[t])
        print(
            f"{t:<16}{n:>9}{tokens[t] / n:>8.0f}{n / med[t]['batched']:>15.1f}"
            f"{n / med[t]['single']:>14.1f}{med[t]['single'] / med[t]['batched']:>7.2f}"
        )
    print(
        f"{'all':<16}{len(reqs):>9}{sum(tokens.values()) / len(reqs):>8.0f}"
        f"{len(reqs) / total['batched']:>15.1f}{len(reqs) / total['single']:>14.1f}"
        f"{total['single'] / total['batched']:>7.2f}"
    )
    single_tok, packed_tok = computed_tokens(lm, reqs)
    print(
        f"tokens through the model: one at a time {single_tok:,}, batched (prefix trees) "
        f"{packed_tok:,} ({single_tok / packed_tok:.2f}x fewer)"
    )
    print(
        f"model forward: {fixed_ms:.2f} ms per call (1 token) + {per_token_us:.0f} us per token "
        f"(16 x 128): one request at a time spends ~{fixed_ms:.1f} ms of overhead per "
        "request, the rest is compute that batching cannot remove (only shared prefixes do)"
    )
    print(
        f"generate_until, {len(gen)} prompts x <= 32 tokens: batched {gmed['batched']:.2f} s, "
        f"one at a time {gmed['single']:.2f} s ({gmed['single'] / gmed['batched']:.2f}x)"
    )
    if wmed:
        print(
            f"all requests at {eval_threads} threads (the eval step's runtime.threads), median "
            f"wall seconds: batched {len(reqs) / wmed['batched']:.1f} req/s, one at a time "
            f"{len(reqs) / wmed['single']:.1f} req/s ({wmed['single'] / wmed['batched']:.2f}x)"
        )
    summary = {
        "benchmark": "eval_throughput",
        "requests": len(reqs),
        "tokens": sum(tokens.values()),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "batched_req_per_s": round(len(reqs) / total["batched"], 2),
        "single_req_per_s": round(len(reqs) / total["single"], 2),
        "batched_vs_single": round(total["single"] / total["batched"], 2),
        "batched_vs_single_by_task": {t: round(med[t]["single"] / med[t]["batched"], 2) for t in tasks},
        "generate_batched_vs_single": round(gmed["single"] / gmed["batched"], 2),
        "tokens_single": single_tok,
        "tokens_batched": packed_tok,
        "forward_fixed_ms": round(fixed_ms, 3),
        "forward_us_per_token": round(per_token_us, 1),
        "eval_threads": eval_threads,
        "batched_req_per_s_eval_threads": round(len(reqs) / wmed["batched"], 2) if wmed else None,
        "single_req_per_s_eval_threads": round(len(reqs) / wmed["single"], 2) if wmed else None,
        "batched_vs_single_eval_threads": round(wmed["single"] / wmed["batched"], 2) if wmed else None,
        "target_batched_vs_single": 5.0,
    }
    write_result("eval_throughput", summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

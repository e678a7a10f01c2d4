"""``run_eval``: one checkpoint or ``.pte`` through lm-eval on the suite from params.

    from mobilemoe.config import load_params
    from mobilemoe.eval.runner import run_eval, format_table
    results = run_eval(load_params(), checkpoint="artifacts/sft")
    print(format_table(results))
    results["tasks"]["arc_easy"]  # {"metric": "acc_norm", "score": .., "stderr": .., "n": 200, ...}

The path is lm-eval's own: ``simple_evaluate(model=<LM>, tasks=..., task_manager=...)``
with the suite's task manager (``mobilemoe.eval.suite``), so a test's oracle model, the
CLI, the flow step and ``lm_eval --model mobilemoe`` all run the same task configs.
Per task the summary keeps one primary metric (our choice: ``acc_norm`` where the task
defines it, else ``acc``, ``exact_match`` (first filter of the task), ``bits_per_byte``),
every metric lm-eval computed, the number of documents, chance level for multiple
choice (mean of 1/number of choices) and how many contexts were truncated to the window.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import sha256_file
from ..errors import UserError

PREFERRED_METRICS = ("acc_norm", "acc", "exact_match", "bits_per_byte", "perplexity", "word_perplexity")
# Our choice: bootstrap resamples for stderrs lm-eval cannot compute in closed form
# (perplexity); its default 100,000 takes minutes. Means (acc, exact_match, bpb) are exact.
BOOTSTRAP_ITERS = 1000


def evaluate_lm(
    lm, tasks: list[str], *, limit: Optional[int], num_fewshot: int, source: str = "offline"
) -> dict:
    """lm-eval's ``simple_evaluate`` on our task manager; returns its raw results dict."""
    from lm_eval import simple_evaluate

    from .suite import task_manager

    try:  # datasets' per-split progress bars would bury the table
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    return simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager(source),
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=True,
        verbosity="ERROR",
    )


def _num(x) -> Optional[float]:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def _leaves(raw: dict, name: str) -> list[str]:
    subtasks = raw.get("group_subtasks", {})
    if name not in subtasks:
        return [name]
    out = []
    for sub in subtasks[name]:
        out += _leaves(raw, sub)
    return out


def _metrics(entry: dict) -> dict[str, dict]:
    """'acc,none': 0.5, 'acc_stderr,none': 0.1 -> {'acc': {'score', 'stderr', 'filter'}}
    (the metric of the first filter wins: lm-eval lists a task's filters in order)."""
    out: dict[str, dict] = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        label = metric if filt == "none" else f"{metric},{filt}"
        out[label] = {
            "metric": metric,
            "filter": filt,
            "score": _num(value),
            "stderr": _num(entry.get(f"{metric}_stderr,{filt}")),
        }
    return out


def _primary(metrics: dict[str, dict]) -> Optional[dict]:
    for want in PREFERRED_METRICS:
        for m in metrics.values():
            if m["metric"] == want:
                return m
    return next(iter(metrics.values()), None)


def _chance(raw: dict, leaves: list[str]) -> Optional[float]:
    samples = raw.get("samples") or {}
    total, n = 0.0, 0
    for leaf in leaves:
        cfg = raw.get("configs", {}).get(leaf, {})
        if cfg.get("output_type") != "multiple_choice" or leaf not in samples:
            return None
        for s in samples[leaf]:
            k = len(s.get("arguments") or s.get("resps") or [])
            if k:
                total, n = total + 1.0 / k, n + 1
    return total / n if n else None


def summarize(raw: dict, tasks: list[str], stats: Optional[dict] = None) -> dict[str, dict]:
    """Per requested task (or group): primary metric, score, stderr, n, chance, truncated."""
    from .suite import task_info

    stats = stats or {}
    n_samples = raw.get("n-samples", {})
    out = {}
    for name in tasks:
        entry = raw.get("results", {}).get(name)
        if entry is None:
            raise UserError(f"lm-eval returned no result for task {name!r}")
        leaves = _leaves(raw, name)
        metrics = _metrics(entry)
        primary = _primary(metrics) or {"metric": None, "score": None, "stderr": None, "filter": None}
        hib = raw.get("higher_is_better", {}).get(name, {}).get(primary["metric"])
        if hib is None and primary["metric"] == "bits_per_byte":
            hib = False
        out[name] = {
            "metric": primary["metric"]
            if primary["filter"] in (None, "none")
            else f"{primary['metric']},{primary['filter']}",
            "score": primary["score"],
            "stderr": primary["stderr"],
            "higher_is_better": True if hib is None else bool(hib),
            "n": int(sum(n_samples.get(leaf, {}).get("effective", 0) for leaf in leaves)),
            "chance": _chance(raw, leaves),
            "n_truncated": int(sum(stats.get("truncated", {}).get(leaf, 0) for leaf in leaves)),
            "n_long_continuations": int(
                sum(stats.get("long_continuations", {}).get(leaf, 0) for leaf in leaves)
            ),
            "n_clamped_generations": int(
                sum(stats.get("clamped_generations", {}).get(leaf, 0) for leaf in leaves)
            ),
            "metrics": {k: {"score": v["score"], "stderr": v["stderr"]} for k, v in metrics.items()},
            **task_info(name),
        }
    return out


def _model_info(lm, checkpoint, pte) -> dict:
    if checkpoint is not None:
        manifest = Path(checkpoint) / "manifest.json"
        digest = json.loads(manifest.read_text()).get("sha256") if manifest.is_file() else None
        cfg = getattr(lm, "config", {}) or {}
        return {
            "kind": "checkpoint",
            "path": str(Path(checkpoint).resolve()),
            "sha256": digest,
            "stage": cfg.get("stage"),
            "step": cfg.get("step"),
            "qat": cfg.get("qat"),
            "max_length": lm.max_length,
        }
    if pte is not None:
        return {
            "kind": "pte",
            "path": str(Path(pte).resolve()),
            "sha256": sha256_file(Path(pte)),
            "max_length": lm.max_length,
        }
    return {"kind": type(lm).__name__}


def _resolve_limit(limit, default: Optional[int]) -> Optional[int]:
    if limit is None:
        return default
    if limit in ("all", 0, "0"):
        return None
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise UserError(f"--limit {limit!r}: expected a number of examples per task or 'all'") from None
    if limit < 0:
        raise UserError(f"--limit {limit}: must be >= 0 (0 or 'all' = full splits)")
    return limit


def run_eval(
    params,
    checkpoint=None,
    pte=None,
    tokenizer=None,
    tasks=None,
    limit=None,
    batch_size: Optional[int] = None,
    num_fewshot: Optional[int] = None,
    device: Optional[str] = None,
    lm=None,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder or a ``.pte`` on ``params.eval`` (overridable here).

    ``limit``: examples per task; None = ``eval.limit``; 0 or "all" = full splits.
    ``lm``: an already built lm-eval ``LM`` (tests' oracle); then checkpoint/pte are unused.
    Returns {"model", "settings", "tasks": {name: {metric, score, stderr, n, ...}}, "wall_s"}.
    """
    import torch

    from .suite import check_data, resolve_tasks

    cfg = params.eval
    if lm is None and (checkpoint is None) == (pte is None):
        raise UserError(
            "evaluate exactly one of a checkpoint (--checkpoint DIR) or an exported program (--pte FILE)"
        )
    names = resolve_tasks(tasks if tasks is not None else cfg.tasks, cfg.source)
    limit = _resolve_limit(limit, cfg.limit)
    shots = cfg.num_fewshot if num_fewshot is None else int(num_fewshot)
    if cfg.source == "offline":
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        check_data(names)
    torch.set_num_threads(params.runtime.threads)
    bs = batch_size or cfg.batch_size
    if lm is None:
        from .lm_model import MobileMoELM, MobileMoEPteLM

        if checkpoint is not None:
            lm = MobileMoELM(
                checkpoint=checkpoint,
                tokenizer=tokenizer,
                batch_size=bs,
                device=device or params.runtime.device,
            )
        else:
            lm = MobileMoEPteLM(pte=pte, tokenizer=tokenizer, batch_size=bs, threads=params.runtime.threads)
    t0 = time.perf_counter()
    try:
        raw = evaluate_lm(lm, names, limit=limit, num_fewshot=shots, source=cfg.source)
    except (ConnectionError, OSError) as e:
        if cfg.source != "hub":
            raise
        raise UserError(
            f"eval.source: hub needs the Hugging Face hub, which is unreachable "
            f"({type(e).__name__}: {e}); set eval.source: offline"
        ) from None
    wall_s = time.perf_counter() - t0
    import lm_eval

    return {
        "model": _model_info(lm, checkpoint, pte),
        "settings": {
            "tasks": names,
            "limit": limit,
            "num_fewshot": shots,
            "batch_size": bs,
            "source": cfg.source,
            "lm_eval": getattr(lm_eval, "__version__", None),
            "threads": torch.get_num_threads(),
        },
        "tasks": summarize(raw, names, getattr(lm, "stats", None)),
        "wall_s": wall_s,
    }


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(results: dict) -> str:
    """A plain-text table: task, metric, score, stderr, n, chance, truncated."""
    header = ("task", "metric", "score", "stderr", "n", "chance", "truncated")
    rows = [header]
    for name, r in results["tasks"].items():
        rows.append(
            (
                name,
                str(r["metric"]),
                _fmt(r["score"]),
                _fmt(r["stderr"]),
                str(r["n"]),
                _fmt(r.get("chance"), 3),
                str(r.get("n_truncated", 0)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def flat_metrics(results: dict, prefix: str = "eval") -> dict[str, float]:
    """Numbers for a metrics store (MLflow keys: letters, digits, ``_ - . /``):
    ``eval/arc_easy/acc_norm``, ``.../acc_norm_stderr``, ``.../n``, ``.../chance``,
    ``.../n_truncated`` and every other metric lm-eval computed for the task."""
    out: dict[str, float] = {}
    for task, r in results["tasks"].items():
        base = f"{prefix}/{task}"
        for name, m in r.get("metrics", {}).items():
            key = name.replace(",", "/")  # exact_match,strict-match -> exact_match/strict-match
            if m["score"] is not None:
                out[f"{base}/{key}"] = float(m["score"])
            if m["stderr"] is not None:
                out[f"{base}/{key}_stderr"] = float(m["stderr"])
        out[f"{base}/n"] = float(r["n"])
        out[f"{base}/n_truncated"] = float(r.get("n_truncated", 0))
        if r.get("chance") is not None:
            out[f"{base}/chance"] = float(r["chance"])
    if "wall_s" in results:
        out[f"{prefix}/wall_s"] = float(results["wall_s"])
    return out


def write_results(results: dict, path) -> Path:
    """Write results as JSON (atomically: a reader never sees half a file)."""
    from ..io import write_text_atomic

    return write_text_atomic(path, json.dumps(results, indent=1))  # keeps eval.tasks' order

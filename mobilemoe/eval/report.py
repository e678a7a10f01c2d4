"""Results as people read them: a bar chart (checkpoint vs ``.pte`` side by side), the
comparison with the numbers the paper reports for paper-scale models (docs/paper.md), Markdown tables.

    fig = plot_results({"checkpoint": ckpt_results, ".pte (INT4)": pte_results})
    rows = paper_comparison(ckpt_results)        # list of dicts, paper-scale numbers labelled
    markdown_results({"checkpoint": ckpt_results}); markdown_comparison(rows)

``results`` are what ``mobilemoe.eval.runner.run_eval`` returns. The flow's eval step logs
the scores to MLflow and puts these tables and the chart into the stage's card.
"""

from __future__ import annotations

from typing import Optional

PAPER_SCALE = "paper-scale models (docs/paper.md), not this run's model size"

# Numbers the paper reports, in percent (docs/paper.md#benchmarks-and-reported-numbers); the
# paper's metric variant (acc vs acc_norm, shots) is not stated in the sources read.
_AGGREGATOR = "MobileMoE (aggregator, probably L)"
PAPER_REPORTED = [
    # an aggregator's table (docs/paper.md#benchmarks-and-reported-numbers): HellaSwag 74.6,
    # PIQA 80.0, SIQA 54.3, MMLU 59.6, ARC-C 57.0, MATH-500 32.2 (probably L).
    {"task": "hellaswag", "benchmark": "HellaSwag", "model": _AGGREGATOR, "score_pct": 74.6},
    {"task": "piqa", "benchmark": "PIQA", "model": _AGGREGATOR, "score_pct": 80.0},
    {"task": "social_iqa", "benchmark": "SIQA", "model": _AGGREGATOR, "score_pct": 54.3},
    {"task": "mmlu", "benchmark": "MMLU", "model": _AGGREGATOR, "score_pct": 59.6},
    {"task": "arc_challenge", "benchmark": "ARC-C", "model": _AGGREGATOR, "score_pct": 57.0},
    {
        "task": "minerva_math_500_bpb",
        "benchmark": "MATH-500",
        "model": _AGGREGATOR,
        "score_pct": 32.2,
        "paper_metric": "accuracy",
        "note": "paper: accuracy of generated answers; we report gold-answer bits per byte: not comparable",
    },
    # docs/paper.md#baselines: OLMoE-1B-7B MMLU 54.1, HellaSwag 80.0, WinoGrande 70.2.
    {"task": "mmlu", "benchmark": "MMLU", "model": "OLMoE-1B-7B", "score_pct": 54.1},
    {"task": "hellaswag", "benchmark": "HellaSwag", "model": "OLMoE-1B-7B", "score_pct": 80.0},
    {"task": "winogrande", "benchmark": "WinoGrande", "model": "OLMoE-1B-7B", "score_pct": 70.2},
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def paper_comparison(results: dict) -> list[dict]:
    """One row per number the paper reports: ours (percent, with stderr and chance) beside
    the paper-scale model's. ``comparable`` is False where the metrics differ (bpb vs
    accuracy) or we did not run the task."""
    rows = []
    tasks = results.get("tasks", {})
    for ref in PAPER_REPORTED:
        task = str(ref["task"])
        ours = tasks.get(task)
        accuracy_like = (
            ours is not None
            and ours.get("higher_is_better", True)
            and ref.get("paper_metric", "accuracy") == "accuracy"
            and not task.endswith("_bpb")
        )
        pct = (lambda x: None if x is None else 100.0 * x) if accuracy_like else (lambda x: x)
        rows.append(
            {
                "task": ref["task"],
                "benchmark": ref["benchmark"],
                "paper_model": ref["model"],
                "paper_score_pct": ref["score_pct"],
                "scale": PAPER_SCALE,
                "our_metric": ours["metric"] if ours else None,
                "our_score": pct(ours["score"]) if ours else None,
                "our_stderr": pct(ours["stderr"]) if ours else None,
                "our_chance": pct(ours.get("chance")) if ours else None,
                "our_n": ours["n"] if ours else 0,
                "comparable": bool(accuracy_like),
                "note": ref.get("note", "" if ours else "not evaluated in this run"),
            }
        )
    return rows


def _score_fmt(x: Optional[float], digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown_comparison(rows: list[dict]) -> str:
    lines = [
        "| benchmark | ours (metric) | ± | chance | n | paper-scale model | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["our_n"]:
            lines.append(
                f"| {r['benchmark']} | not run | | | 0 | {r['paper_model']} | {r['paper_score_pct']} |"
            )
            continue
        digits = 1 if r["comparable"] else 3
        lines.append(
            f"| {r['benchmark']} | {_score_fmt(r['our_score'], digits)} "
            f"({r['our_metric']}) | {_score_fmt(r['our_stderr'], digits)} | "
            f"{_score_fmt(r['our_chance'])} | {r['our_n']} | {r['paper_model']} | "
            f"{r['paper_score_pct']}{'' if r['comparable'] else ' (not comparable)'} |"
        )
    lines.append(
        f"\nPaper numbers are for {PAPER_SCALE}; ours in percent where the metric "
        "is an accuracy. A tiny model near chance is the honest result."
    )
    return "\n".join(lines)


def markdown_results(results_by_model: dict[str, dict]) -> str:
    """A Markdown table: one row per task, one score ± stderr column per model."""
    labels = list(results_by_model)
    tasks = _task_order(results_by_model)
    lines = [
        "| task | metric | " + " | ".join(labels) + " | n | chance |",
        "|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for t in tasks:
        first = next(r["tasks"][t] for r in results_by_model.values() if t in r["tasks"])
        cells = []
        for label in labels:
            r = results_by_model[label]["tasks"].get(t)
            cells.append(
                "-" if r is None or r["score"] is None else f"{r['score']:.4f} ± {_score_fmt(r['stderr'], 4)}"
            )
        lines.append(
            f"| {t} | {first['metric']} | "
            + " | ".join(cells)
            + f" | {first['n']} | {_score_fmt(first.get('chance'), 3)} |"
        )
    return "\n".join(lines)


def _task_order(results_by_model: dict[str, dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results_by_model.values():
        for t in r.get("tasks", {}):
            seen.setdefault(t, None)
    return list(seen)


def plot_results(results_by_model: dict[str, dict]):
    """Grouped bars per task (one bar per model, stderr whiskers, chance as a dashed tick);
    accuracy-like tasks on the left axis, lower-is-better ones (bits per byte) on the right."""
    plt = _plt()
    import numpy as np

    tasks = _task_order(results_by_model)
    if not tasks:
        raise ValueError("plot_results: no task results to plot")

    def hib(t):
        return next(r["tasks"][t] for r in results_by_model.values() if t in r["tasks"]).get(
            "higher_is_better", True
        )

    panels = [
        (title, [t for t in tasks if hib(t) == up])
        for title, up in (("score (higher is better)", True), ("bits per byte (lower is better)", False))
    ]
    panels = [(title, ts) for title, ts in panels if ts]
    widths = [max(2, len(ts)) for _, ts in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.0 + 0.9 * sum(widths), 4.2),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    labels = list(results_by_model)
    bar_w = 0.8 / len(labels)
    for ax, (title, ts) in zip(axes[0], panels):
        x = np.arange(len(ts))
        for k, label in enumerate(labels):
            rs = [results_by_model[label]["tasks"].get(t) for t in ts]
            ys = [np.nan if r is None or r["score"] is None else r["score"] for r in rs]
            es = [0.0 if r is None or r["stderr"] is None else r["stderr"] for r in rs]
            ax.bar(x + (k - (len(labels) - 1) / 2) * bar_w, ys, bar_w, yerr=es, capsize=2, label=label)
        for i, t in enumerate(ts):
            chance = next(
                (r["tasks"][t].get("chance") for r in results_by_model.values() if t in r["tasks"]), None
            )
            if chance is not None:
                ax.hlines(
                    chance,
                    i - 0.45,
                    i + 0.45,
                    colors="black",
                    linestyles="dashed",
                    linewidth=1,
                    label="chance" if i == 0 else None,
                )
        ax.set_xticks(x)
        ax.set_xticklabels(ts, rotation=35, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig

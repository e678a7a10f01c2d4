"""Metaflow card content for the pipeline's steps: plots people look at, tables they read.

Each function takes the step's ``current.card`` (or any list-like that accepts
components) and the small reference the step produced. Plots are matplotlib figures
embedded as images, so a card is one self-contained HTML file.
"""

from __future__ import annotations

import math
from typing import Any, Optional


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def table(card, rows: list[tuple[str, Any]], headers=("metric", "value")) -> None:
    from metaflow.cards import Table

    card.append(Table([[k, _fmt(v)] for k, v in rows], headers=list(headers)))


def markdown(card, text: str) -> None:
    from metaflow.cards import Markdown

    card.append(Markdown(text))


def figure(card, fig) -> None:
    from metaflow.cards import Image

    card.append(Image.from_matplotlib(fig))
    _plt().close(fig)


def val_drop_sentence(stage: str, first: Optional[float], last: Optional[float]) -> str:
    if first is None or last is None:
        return f"**{stage}**: no validation loss recorded."
    drop = first - last
    pct = 100 * drop / first if first else float("nan")
    verb = "fell" if drop > 0 else "ROSE"
    return (f"**{stage}**: validation loss {verb} from {first:.4f} to {last:.4f} "
            f"({'-' if drop > 0 else '+'}{abs(drop):.4f}, {'-' if drop > 0 else '+'}{abs(pct):.1f}%).")


def stage_card(card, ref: dict, vocab_size: Optional[int] = None) -> None:
    """Loss curves (train and validation) as a plot, key numbers as a table."""
    s = ref.get("summary", {})
    stage = ref.get("stage", "stage")
    markdown(card, f"# {stage}" + (" (reused from cache)" if ref.get("reused") else ""))
    markdown(card, val_drop_sentence(stage, s.get("first_val_loss"), s.get("last_val_loss")))
    if vocab_size and s.get("last_val_loss") is not None and stage == "pretrain":
        ratio = s["last_val_loss"] / math.log(vocab_size)
        markdown(card, f"Final validation loss is {100 * ratio:.1f}% of ln(vocab) = "
                       f"{math.log(vocab_size):.3f} (uniform guessing).")
    hist = ref.get("history") or {}
    if hist.get("train") or hist.get("val"):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if hist.get("train"):
            xs, ys = zip(*hist["train"])
            ax.plot(xs, ys, label="train loss", alpha=0.8)
        if hist.get("val"):
            xs, ys = zip(*hist["val"])
            ax.plot(xs, ys, "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{stage}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        figure(card, fig)
    rows = [(k, v) for k, v in s.items() if isinstance(v, (int, float, str))]
    rows += [("checkpoint sha256", ref.get("checkpoint_sha256", "")[:16] + "..."),
             ("MLflow run", ref.get("run_id")), ("produced by run", ref.get("produced_by_run_id"))]
    table(card, rows)
    load = hist.get("expert_load")
    if load:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3))
        for layer, series in sorted(load.items()):
            xs, ys = zip(*series)
            ax.plot(xs, ys, label=f"layer {layer}")
        ax.set_xlabel("step")
        ax.set_ylabel("max / mean expert load")
        ax.set_title(f"{stage}: MoE load balance (1.0 = perfectly balanced)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
        figure(card, fig)


def bar_chart(card, title: str, labels: list[str], series: dict[str, list[float]],
              ylabel: str, reference: Optional[dict[str, float]] = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels) + 2), 3.8))
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width=width, label=name)
    if reference:
        for j, lab in enumerate(labels):
            if lab in reference:
                ax.plot([j - 0.4, j + 0.4], [reference[lab]] * 2, "k--", lw=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if n > 1:
        ax.legend()
    fig.tight_layout()
    figure(card, fig)

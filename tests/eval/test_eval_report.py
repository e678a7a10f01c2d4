"""Bar chart (checkpoint vs .pte side by side) and the comparison with the paper's reported numbers."""

from __future__ import annotations

import pytest

from mobilemoe.eval.report import (
    PAPER_REPORTED,
    markdown_comparison,
    markdown_results,
    paper_comparison,
    plot_results,
)


def _results(scores: dict[str, float], bpb: float | None = None) -> dict:
    tasks = {
        name: {
            "metric": "acc",
            "score": s,
            "stderr": 0.02,
            "n": 200,
            "chance": 0.25,
            "higher_is_better": True,
        }
        for name, s in scores.items()
    }
    if bpb is not None:
        tasks["minerva_math_500_bpb"] = {
            "metric": "bits_per_byte",
            "score": bpb,
            "stderr": 0.1,
            "n": 200,
            "chance": None,
            "higher_is_better": False,
        }
    return {"tasks": tasks}


def test_plot_has_one_bar_per_model_and_task_and_a_bpb_panel():
    from matplotlib.patches import Rectangle

    ckpt = _results({"hellaswag": 0.30, "piqa": 0.55, "arc_easy": 0.31}, bpb=3.2)
    pte = _results({"hellaswag": 0.29, "piqa": 0.54}, bpb=3.3)
    fig = plot_results({"checkpoint": ckpt, ".pte (INT4)": pte})
    score_ax, bpb_ax = fig.axes
    bars = [p for p in score_ax.patches if isinstance(p, Rectangle)]
    heights = sorted(round(b.get_height(), 3) for b in bars if b.get_height() == b.get_height())
    assert heights == [0.29, 0.3, 0.31, 0.54, 0.55]  # the .pte has no arc_easy bar
    assert [t.get_text() for t in score_ax.get_xticklabels()] == ["hellaswag", "piqa", "arc_easy"]
    assert sorted(round(b.get_height(), 2) for b in bpb_ax.patches) == [3.2, 3.3]
    assert "lower is better" in bpb_ax.get_title()


def test_paper_comparison_labels_paper_scale_numbers():
    rows = paper_comparison(_results({"hellaswag": 0.30, "mmlu": 0.26}, bpb=3.2))
    assert len(rows) == len(PAPER_REPORTED)
    hs = [r for r in rows if r["task"] == "hellaswag"]
    assert {r["paper_model"] for r in hs} == {"MobileMoE (aggregator, probably L)", "OLMoE-1B-7B"}
    assert {r["paper_score_pct"] for r in hs} == {74.6, 80.0}  # docs/paper.md#benchmarks-and-reported-numbers
    assert all(r["our_score"] == pytest.approx(30.0) and r["comparable"] for r in hs)
    assert all("paper-scale" in r["scale"] for r in rows)
    math500 = next(r for r in rows if r["benchmark"] == "MATH-500")
    assert not math500["comparable"] and math500["our_score"] == 3.2  # bpb, never as accuracy
    piqa = next(r for r in rows if r["task"] == "piqa")
    assert piqa["our_score"] is None and piqa["our_n"] == 0
    md = markdown_comparison(rows)
    assert "not comparable" in md and "not run" in md and "paper-scale" in md


def test_markdown_results_side_by_side():
    md = markdown_results({"checkpoint": _results({"piqa": 0.55}), ".pte": _results({"piqa": 0.5})})
    lines = md.splitlines()
    assert lines[0].startswith("| task | metric | checkpoint | .pte |")
    assert "0.5500 ± 0.0200" in lines[2] and "0.5000 ± 0.0200" in lines[2]

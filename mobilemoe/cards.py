"""Metaflow card content for the pipeline's steps: plots people look at, tables they read.

Each function takes the step's ``current.card`` (or any list-like that accepts
components) and the :class:`~mobilemoe.pipeline.StageRef` the step produced; it reads the
reference's fields and the files it points to (loss curves, evaluation results) and
never changes it. Plots are matplotlib figures embedded as images, so a card is one
self-contained HTML file.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .pipeline import DenseRef, EvalRef, ExportRef, ProfileRef, ScalingRef, TrainRef


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
    return (
        f"**{stage}**: validation loss {verb} from {first:.4f} to {last:.4f} "
        f"({'-' if drop > 0 else '+'}{abs(drop):.4f}, {'-' if drop > 0 else '+'}{abs(pct):.1f}%)."
    )


def stage_card(card, ref: TrainRef, vocab_size: Optional[int] = None) -> None:
    """Loss curves (train and validation) as a plot, key numbers as a table."""
    s = ref.summary
    stage = ref.stage
    markdown(card, f"# {stage}" + (" (reused from cache)" if ref.reused else ""))
    markdown(card, val_drop_sentence(stage, s.get("first_val_loss"), s.get("last_val_loss")))
    if vocab_size and s.get("last_val_loss") is not None and stage == "pretrain":
        ratio = s["last_val_loss"] / math.log(vocab_size)
        markdown(
            card,
            f"Final validation loss is {100 * ratio:.1f}% of ln(vocab) = "
            f"{math.log(vocab_size):.3f} (uniform guessing).",
        )
    hist = ref.history()
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
    rows += [
        ("checkpoint sha256", ref.checkpoint_sha256[:16] + "..."),
        ("MLflow run", ref.run_id),
        ("produced by run", ref.produced_by_run_id),
    ]
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


def export_card(card, ref: ExportRef) -> None:
    """The program: size against the accounted weights, operators, parity."""
    import json
    from pathlib import Path

    report = json.loads(Path(ref.report_path).read_text())
    markdown(card, "# export" + (" (reused from cache)" if ref.reused else ""))
    q = report.get("quantization", {})
    size = report["size"]
    markdown(
        card,
        f"`{ref.pte}`: **{size['program_bytes'] / 2**20:.2f} MiB** "
        f"({q.get('scheme')}, group {q.get('group_size')}; fp32 weights would be "
        f"{size['fp32_weight_bytes'] / 2**20:.2f} MiB, INT4 accounting "
        f"{size['int4_weight_bytes_accounted'] / 2**20:.2f} MiB). "
        f"LoggedModel `{ref.model_id}`.",
    )
    ops = report.get("operators", {})
    rows = [
        ("delegated to XNNPACK (ops)", ops.get("delegated_ops")),
        ("portable (ops)", ops.get("portable_ops")),
        ("partitions", ops.get("partitions")),
        ("export time (s)", report.get("export_s")),
        ("pte sha256", ref.pte_sha256[:16] + "..."),
    ]
    parity = report.get("parity") or {}
    if parity:
        rows += [
            ("parity: max |logit diff| (eager converted vs .pte)", parity.get("max_abs_logit_diff")),
            ("parity: tolerance", parity.get("tolerance")),
            ("parity: identical greedy tokens", parity.get("identical_greedy_tokens")),
            ("parity: passed", parity.get("passed")),
        ]
    table(card, rows)
    per_layer = ops.get("per_layer") or {}
    if per_layer:
        table(
            card,
            [
                (
                    k,
                    f"{v['delegated']} delegated, {v['portable']} portable "
                    f"{', '.join(f'{o}x{n}' for o, n in v['portable_ops'].items())}",
                )
                for k, v in per_layer.items()
            ],
            ("layer", "operators"),
        )


def eval_card(card, ref: EvalRef) -> None:
    """Scores of the checkpoint and of the .pte side by side, a bar chart, the paper's table."""
    from .eval.report import markdown_comparison, markdown_results, paper_comparison, plot_results

    results = ref.results()
    markdown(card, "# eval (lm-eval)" + (" (reused from cache)" if ref.reused else ""))
    if not results:
        markdown(card, "no results")
        return
    labels = {"checkpoint": "QAT checkpoint (eager)", "pte": "INT4 .pte (ExecuTorch)"}
    by_model = {labels.get(k, k): v for k, v in results.items()}
    settings = next(iter(results.values()))["settings"]
    markdown(
        card,
        f"limit {settings.get('limit')} documents per task, {settings.get('num_fewshot')}-shot, "
        f"source {settings.get('source')}. Stderr is lm-eval's; 'chance' is the score of "
        "uniform guessing.",
    )
    markdown(card, markdown_results(by_model))
    figure(card, plot_results(by_model))
    rows = paper_comparison(results.get("pte") or results["checkpoint"])
    if rows:
        markdown(card, "## Against the numbers the paper reports (paper-scale models, labelled)")
        markdown(card, markdown_comparison(rows))


def device_card(card, ref: ProfileRef) -> None:
    """Tokens/s by prompt length (plot) and the result document's key numbers."""
    from .device_profile import decode_ops, plot_tok_per_s

    r = ref.result
    markdown(card, "# device profile" + (" (reused from cache)" if ref.reused else ""))
    markdown(
        card,
        f"status **{r.get('status')}**"
        + (f": {r.get('reason')}" if r.get("reason") else "")
        + f" on {r.get('device', {}).get('description', '?')}",
    )
    figure(card, plot_tok_per_s(r))
    table(card, sorted(ref.summary.items()))
    ops = decode_ops(r)
    if ops:
        markdown(card, "## one decode step, slowest operators (ExecuTorch ETDump)")
        table(card, [(op, f"{ms:.3f} ms x{calls}") for op, ms, calls in ops], ("operator", "time, calls"))


def dense_card(card, ref: DenseRef) -> None:
    """The science check: MoE vs dense at equal active parameters and tokens."""
    c = ref.comparison
    markdown(card, "# science check: MoE vs dense with the same active parameters")
    moe, dense = c.get("moe", {}), c.get("dense", {})
    if moe.get("val_loss") is not None and dense.get("val_loss") is not None:
        d = c["val_loss_delta"]
        better = "lower" if d < 0 else "higher"
        markdown(
            card,
            f"On the same {c.get('tokens')} pre-training tokens, the MoE's validation loss "
            f"is **{abs(d):.4f} nats {better}** than the dense model's "
            f"({moe['val_loss']:.4f} vs {dense['val_loss']:.4f}).",
        )
    rows = []
    for key in ("model", "val_loss", "active_params", "total_params", "flops_per_token", "tok_per_s"):
        rows.append((key, f"{_fmt(moe.get(key))} | {_fmt(dense.get(key))}"))
    prof = ref.profile.summary if ref.profile else {}
    if prof.get("device_decode_tok_per_s") is not None:
        rows.append(
            ("decode tok/s (device lab)", f"see device_profile | {prof['device_decode_tok_per_s']:.1f}")
        )
    table(card, rows, ("", "MoE | dense"))
    hist = ref.history()
    if hist.get("val"):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        xs, ys = zip(*hist["val"])
        ax.plot(xs, ys, "o-", label="dense validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        figure(card, fig)


def _point_rows(records: list[dict]) -> list[list[Any]]:
    rows = []
    for r in records:
        loss = r.get("val_loss")
        rows.append(
            [
                r["name"],
                f"{r.get('active_params', 0):,}",
                f"{r.get('total_params', 0):,}",
                f"{r.get('sparsity', 1):g} / {r.get('granularity', 1):g} / {r.get('shared_fraction', 0):g}",
                f"{r.get('tokens', 0):,}",
                f"{loss:.4f}" if isinstance(loss, float) else "-",
                r.get("status", "?") + (" (reused)" if r.get("reused") else ""),
            ]
        )
    return rows


_POINT_HEADERS = ["point", "active (non-emb)", "total (non-emb)", "S / G / f", "tokens", "val loss", "status"]


def points_card(card, records: list[dict]) -> None:
    """One foreach task of the scaling sweep: its points."""
    from metaflow.cards import Table

    markdown(card, f"# scaling sweep: {len(records)} point(s) in this task")
    if records:
        card.append(Table(_point_rows(records), headers=_POINT_HEADERS))
    for r in records:
        if r.get("reason"):
            markdown(card, f"- **{r['name']}** {r['status']}: {r['reason']}")


_CHECKS = (
    ("paper_check", "at the params' budgets"),
    ("paper_check_in_range", "at budgets inside the sweep's range"),
)


def scaling_card(card, ref: ScalingRef) -> None:
    """The sweep, the fitted law with its checks, the design, the plots."""
    from metaflow.cards import Image, Table

    records = ref.records()
    markdown(card, f"# scaling law: {len(records)} sweep points, fit {ref.status}")
    if ref.reason:
        markdown(card, f"**Note:** {ref.reason}")
    if records:
        card.append(Table(_point_rows(records), headers=_POINT_HEADERS))
    law = ref.fit()
    if law is not None:
        markdown(card, f"## Law\n`{law.get('form', '')}`")
        intervals = law.get("intervals", {})
        rows = [
            (
                name,
                f"{_fmt(v)}"
                + (f" [{_fmt(intervals[name][0])}, {_fmt(intervals[name][1])}]" if name in intervals else ""),
            )
            for name, v in law.get("params", {}).items()
        ]
        table(card, rows, ("parameter", "value [bootstrap 95% interval]"))
        extra = law.get("extrapolation") or {}
        table(
            card,
            [
                ("points fitted", law.get("n_points")),
                ("R^2", law.get("r2")),
                ("leave-one-out median relative error", law.get("loo_median_rel_err")),
                ("... of the constant predictor (mean loss)", law.get("loo_const_median_rel_err")),
                ("loss spread (nats)", law.get("loss_spread")),
                ("extrapolation: median relative error", extra.get("median_rel_err")),
            ],
        )
    chosen = ref.design()
    if chosen is not None:
        best = chosen["best"]
        c = best.get("coordinates", {})
        acc = best.get("accounting", {})
        warn = " (EXTRAPOLATED beyond the fitted range)" if chosen.get("extrapolated") else ""
        markdown(
            card,
            f"## Design under the budgets{warn}\nd_model {best['model'].get('d_model')}, "
            f"{best['model'].get('n_layers')} layers, sparsity {c.get('sparsity', 1):g}, granularity "
            f"{c.get('granularity', 1):g}, shared fraction {c.get('shared_fraction', 0):g}: predicted loss "
            f"{best['predicted_loss']:.4f}; {acc.get('total_params', 0):,} params "
            f"({acc.get('active_params', 0):,} active).",
        )
        checks = [(chosen.get(k), label) for k, label in _CHECKS]
        if any(c for c, _ in checks):
            markdown(
                card, "## Paper check\n" + "\n".join(f"- {label}: {c['summary']}" for c, label in checks if c)
            )
    for path in ref.plots:
        with open(path, "rb") as fh:
            card.append(Image(fh.read(), label=path.rsplit("/", 1)[-1]))


def summary_card(card, flow) -> None:
    """The run at a glance: every stage's headline number and MLflow run."""
    markdown(
        card,
        f"# {flow.ctx.parsed.model.name}: pipeline summary\nMLflow pipeline run `{flow.ctx.pipeline_run_id}`",
    )
    rows = []
    sc = getattr(flow, "scaling_result", None)
    if sc is not None:
        law = sc.fit() or {}
        text = f"{len(sc.records())} sweep points; fit {sc.status}"
        if law:
            text += f", LOO median relative error {law.get('loo_median_rel_err', float('nan')):.2%}"
        rows.append(("scaling", text + (f" ({sc.reason})" if sc.reason else "") + f"; run {sc.run_id}"))
    for name in ("pretrained", "midtrained", "sft_model", "qat_model"):
        ref = getattr(flow, name)
        s = ref.summary
        rows.append(
            (
                ref.stage,
                f"val loss {_fmt(s.get('first_val_loss'))} -> "
                f"{_fmt(s.get('last_val_loss'))}; run {ref.run_id}" + (" (reused)" if ref.reused else ""),
            )
        )
    e = flow.exported
    rows.append(("export", f"{e.summary.get('program_mib', 0):.2f} MiB .pte; model {e.model_id}"))
    ev = flow.evaluated.summary
    pte_scores = {k: v for k, v in ev.items() if k.startswith("eval_pte/") and k.endswith("/primary")}
    if pte_scores:
        mean = sum(pte_scores.values()) / len(pte_scores)
        rows.append(("eval", f"mean primary score of the .pte over {len(pte_scores)} tasks: {mean:.4f}"))
    p = flow.profile.summary
    if p.get("device_decode_tok_per_s") is not None:
        rows.append(("device_profile", f"decode {p['device_decode_tok_per_s']:.1f} tok/s"))
    c = flow.dense.comparison
    if c.get("val_loss_delta") is not None:
        rows.append(("dense_baseline", f"MoE - dense val loss = {c['val_loss_delta']:+.4f}"))
    from .device_profile import COST_RATIO_TARGET, decode_cost_ratio

    ratio = decode_cost_ratio(flow.profile, flow.dense.profile or {})
    if ratio is not None:
        verdict = "ok" if ratio <= COST_RATIO_TARGET else "ABOVE TARGET"
        rows.append(
            (
                "decode cost",
                f"MoE / dense-active decode time = {ratio:.2f} (target <= {COST_RATIO_TARGET}: {verdict})",
            )
        )
    table(card, rows, ("stage", "result"))

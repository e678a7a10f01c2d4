"""The scaling card's figures (PNG, matplotlib Agg): the sweep, the law, the chosen design.

    paths = render(records, law, design_result, out_dir)

1. ``loss_vs_active_params.png``: validation loss against active non-embedding params, one
   colour a sparsity; the law's curve for each at that sparsity's commonest granularity and
   shared fraction (tokens by the sweep's rule).
2. ``iso_loss_sparsity_granularity.png``: the law's loss over (sparsity, granularity) at the
   sweep's middle size, with the swept points.
3. ``loss_vs_int4_memory.png``: the best predicted loss at each INT4 weight memory under the
   other budgets, dense against MoE (the paper's Pareto figure), the chosen design marked
   (needs a :func:`mobilemoe.scaling.design.design` result).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .law import predict, split_records


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tpp(law: dict) -> float:
    from .design import tokens_per_param

    return tokens_per_param(law)


def _loss_vs_params(ok: list[dict], law: dict | None, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    sparsities = sorted({float(r["sparsity"]) for r in ok})
    for i, S in enumerate(sparsities):
        pts = [r for r in ok if float(r["sparsity"]) == S]
        color = cmap(i / max(1, len(sparsities) - 1))
        ax.scatter(
            [r["active_params"] for r in pts],
            [r["val_loss"] for r in pts],
            color=color,
            s=18,
            label=f"sparsity {S:g}",
        )
        if law is not None:
            (G, f), _ = Counter(
                (float(r["granularity"]), float(r["shared_fraction"])) for r in pts
            ).most_common(1)[0]
            N = np.geomspace(min(r["active_params"] for r in ok), max(r["active_params"] for r in ok), 50)
            y = predict(
                law, active_params=N, tokens=N * _tpp(law), sparsity=S, granularity=G, shared_fraction=f
            )
            ax.plot(N, y, color=color, lw=1, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("active non-embedding parameters")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("sweep points and the fitted law")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _iso_loss(ok: list[dict], law: dict, path: Path) -> Path:
    plt = _plt()
    lo, hi = law["ranges"]["active_params"]
    N = float(np.sqrt(lo * hi))
    moe_f = [float(r["shared_fraction"]) for r in ok if float(r["sparsity"]) > 1]
    f = float(np.median(moe_f)) if moe_f else 0.0
    S = np.geomspace(1, max(16.0, law["ranges"]["sparsity"][1]), 60)
    G = np.geomspace(1, max(16.0, law["ranges"]["granularity"][1]), 60)
    SS, GG = np.meshgrid(S, G)
    Z = predict(law, active_params=N, tokens=N * _tpp(law), sparsity=SS, granularity=GG, shared_fraction=f)
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    cs = ax.contourf(SS, GG, Z, levels=14, cmap="viridis_r")
    ax.contour(SS, GG, Z, levels=14, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, label="predicted loss")
    ax.scatter(
        [r["sparsity"] for r in ok],
        [r["granularity"] for r in ok],
        c="w",
        edgecolors="k",
        s=20,
        label="swept",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sparsity (total / active slots)")
    ax.set_ylabel("granularity (4 d_model / expert width)")
    ax.set_title(f"iso-loss at N = {N:,.0f} active, shared fraction {f:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(chosen: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for kind, style in (("dense", "C0--"), ("moe", "C3-")):
        pts = np.array(chosen["frontier"][kind]).reshape(-1, 2)
        if len(pts):
            ax.plot(
                pts[:, 0], pts[:, 1], style, drawstyle="steps-post", label=f"{kind} (best at each memory)"
            )
    best = chosen["best"]
    c = best["coordinates"]
    ax.scatter(
        [best["accounting"]["int4_weight_gib"]],
        [best["predicted_loss"]],
        marker="*",
        s=160,
        color="k",
        zorder=5,
        label=f"chosen: S {c['sparsity']:g}, G {c['granularity']:g}, f {c['shared_fraction']:g}",
    )
    budget = chosen["budgets"].get("memory_gib")
    if budget and np.isfinite(budget):
        ax.axvline(budget, color="grey", lw=0.8, ls=":", label=f"memory budget {budget:g} GiB")
    ax.set_xscale("log")
    ax.set_xlabel("INT4 weight memory (GiB)")
    ax.set_ylabel("predicted loss")
    title = "predicted loss vs memory (under the other budgets)"
    ax.set_title(title + (" - extrapolated" if chosen.get("extrapolated") else ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(records: list[dict], law: dict | None, chosen: dict | None, out_dir: Path) -> list[Path]:
    """Write the figures that the inputs allow; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok, _ = split_records(records)
    paths = []
    if ok:
        paths.append(_loss_vs_params(ok, law, out_dir / "loss_vs_active_params.png"))
    if ok and law is not None:
        paths.append(_iso_loss(ok, law, out_dir / "iso_loss_sparsity_granularity.png"))
    if chosen is not None:
        paths.append(_pareto(chosen, out_dir / "loss_vs_int4_memory.png"))
    return paths

"""The paper check (docs/scaling.md#paper-check): does the fitted law agree with MobileMoE?

    from mobilemoe.scaling.check import paper_check
    check = paper_check(law, params.model, memory_gib=3.0, gflops_per_token=2.5, context=2048)
    check["agrees"], check["summary"]

The paper's claim 1 (docs/paper.md#budgets-and-scaling-law): under a phone's memory and
compute budgets together the best architecture has *moderate* sparsity (neither dense nor
the most experts tried), *fine-grained* experts (granularity > 1) and *shared* experts
(shared fraction > 0). Abnar et al.: under memory alone the best sparsity is interior,
under compute alone more sparsity keeps helping. The check reports what the law says for
each budget; it asserts nothing: what the data says is the result.
"""

from __future__ import annotations

import math

from ..config.model import ModelConfig
from .design import SPARSITIES, design


def _optimum(out: dict) -> dict:
    c = out["best"]["coordinates"]
    return {
        "sparsity": c["sparsity"],
        "granularity": c["granularity"],
        "shared_fraction": c["shared_fraction"],
        "active_params": c["active_params"],
        "predicted_loss": out["best"]["predicted_loss"],
        "int4_weight_gib": out["best"]["accounting"]["int4_weight_gib"],
        "gflops_per_token": out["best"]["accounting"]["flops_per_token"] / 1e9,
        "extrapolated": out["extrapolated"],
    }


def _margins(out: dict) -> dict:
    """How much worse (predicted nats) the best design WITHOUT each property is: dense
    (sparsity 1), coarse (granularity 1), no shared expert. None where the grid has none."""
    best = out["best"]["predicted_loss"]
    rows = [out["best"], *out["candidates"]]

    def gap(without) -> float | None:
        alts = [r["predicted_loss"] for r in rows if without(r["coordinates"])]
        return float(min(alts) - best) if alts else None

    return {
        "dense": gap(lambda c: c["sparsity"] == 1),
        "coarse": gap(lambda c: c["granularity"] == 1),
        "no_shared": gap(lambda c: c["shared_fraction"] == 0),
    }


def _noise_nats(law: dict) -> float:
    """The fit's typical leave-one-out miss in nats: margins below it are ties."""
    lo, hi = law.get("loss_range") or [0.0, 0.0]
    return float(law.get("loo_median_rel_err", 0.0)) * (lo + hi) / 2


def paper_check(
    law: dict, base: ModelConfig, *, memory_gib: float, gflops_per_token: float, context: int = 2048
) -> dict:
    everything = design(
        law, base, memory_gib=memory_gib, gflops_per_token=gflops_per_token, context=context, top=1000
    )
    joint = _optimum(everything)
    margins = _margins(everything)
    noise = _noise_nats(law)
    memory_only = _optimum(design(law, base, memory_gib=memory_gib, context=context))
    compute_only = _optimum(
        design(law, base, memory_gib=math.inf, gflops_per_token=gflops_per_token, context=context)
    )
    top = float(max(SPARSITIES))
    moderate = 1 < joint["sparsity"] < top
    fine = joint["granularity"] > 1
    shared = joint["shared_fraction"] > 0
    agrees = moderate and fine and shared

    def says(flag: bool) -> str:
        return "yes" if flag else "no"

    summary = (
        f"Under {memory_gib:g} GiB and {gflops_per_token:g} GFLOPs/token the law's optimum is sparsity "
        f"{joint['sparsity']:g}, granularity {joint['granularity']:g}, shared fraction "
        f"{joint['shared_fraction']:g}: moderate sparsity {says(moderate)}, fine-grained {says(fine)}, "
        f"shared experts {says(shared)} -> {'agrees with' if agrees else 'differs from'} the paper. "
        f"Memory alone: sparsity {memory_only['sparsity']:g}; compute alone: sparsity "
        f"{compute_only['sparsity']:g} (Abnar et al. expect interior, then the most tried: {top:g})."
    )
    shown = ", ".join(f"{k} +{v:.3f}" for k, v in margins.items() if v is not None)
    if shown:
        ties = [k for k, v in margins.items() if v is not None and v < noise]
        summary += (
            f" Predicted loss of the best design without each property: {shown} nats, against the "
            f"fit's leave-one-out miss of ~{noise:.3f} nats"
            + (f" ({', '.join(ties)}: within it, a tie)." if ties else " (all beyond it).")
        )
    if joint["extrapolated"]:
        summary += " The optimum lies outside the fitted range (extrapolated)."
    return {
        "joint": joint,
        "memory_only": memory_only,
        "compute_only": compute_only,
        "moderate_sparsity": moderate,
        "fine_grained": fine,
        "shared_experts": shared,
        "agrees": agrees,
        "margins_nats": margins,
        "noise_nats": noise,
        "ties": [k for k, v in margins.items() if v is not None and v < noise],
        "memory_only_interior": 1 < memory_only["sparsity"] < top,
        "compute_only_most_sparse": compute_only["sparsity"] == top,
        "budgets": {"memory_gib": memory_gib, "gflops_per_token": gflops_per_token, "context": context},
        "summary": summary,
    }

"""`design` under budgets, the paper check, the figures."""

from __future__ import annotations

import pytest

from mobilemoe.config import load_preset
from mobilemoe.errors import UserError
from mobilemoe.model.accounting import GIB
from mobilemoe.scaling.design import design, extrapolation


def test_paper_budgets_give_a_budget_fitting_moe_and_say_extrapolated(law):
    base = load_preset("mobilemoe-s").model
    out = design(law, base, memory_gib=3.0, gflops_per_token=2.5, context=2048, top=3)
    best = out["best"]
    acc = best["accounting"]  # mobilemoe arch's own accounting of the chosen shape
    assert acc["int4_weight_bytes"] <= 3.0 * GIB and acc["flops_per_token"] <= 2.5e9
    assert best["coordinates"]["sparsity"] > 1 and best["model"]["moe"] is not None
    assert best["model"]["vocab_size"] == base.vocab_size
    assert out["extrapolated"] and "active_params" in {e["axis"] for e in best["extrapolation"]}
    archs = {
        (c["coordinates"]["sparsity"], c["coordinates"]["granularity"], c["coordinates"]["shared_fraction"])
        for c in out["candidates"]
    }
    assert len(archs) == len(out["candidates"]) == 3
    assert all(c["predicted_loss"] >= best["predicted_loss"] for c in out["candidates"])
    assert out["law"]["form"] == law["form"] and out["frontier"]["dense"] and out["frontier"]["moe"]


def test_active_params_and_decode_budgets(law):
    base = load_preset("tiny").model
    out = design(law, base, memory_gib=0.01, active_params=2_000_000, decode_tok_s=2000, bandwidth_gbs=10.0)
    best = out["best"]
    assert best["accounting"]["active_params"] <= 2_000_000
    assert best["predicted_decode_tok_s"] >= 2000
    assert best["predicted_decode_tok_s"] == pytest.approx(10e9 / best["decode_bytes_per_token"])
    with pytest.raises(UserError, match="--decode-tok-s needs the target's decode bandwidth"):
        design(law, base, memory_gib=0.01, active_params=2_000_000, decode_tok_s=2000)


def test_an_infeasible_budget_names_the_smallest_feasible(law):
    with pytest.raises(
        UserError, match=r"no architecture fits.*needs [0-9.e-]+ GiB.*GFLOPs/token at context 2048"
    ):
        design(law, load_preset("tiny").model, memory_gib=1e-6, gflops_per_token=2.5)


def test_extrapolation_names_each_axis_outside_the_fit(law):
    inside = {a: lo for a, (lo, hi) in law["ranges"].items() if a != "tokens_per_param"}
    inside["tokens"] = inside["active_params"] * law["ranges"]["tokens_per_param"][0]
    assert extrapolation(law, inside) == []
    out = extrapolation(law, inside | {"granularity": 16.0, "active_params": 1e9, "tokens": 2e10})
    assert {e["axis"] for e in out} == {"granularity", "active_params"}


def test_paper_check_reports_each_budget(law):
    from mobilemoe.scaling.check import paper_check

    check = paper_check(law, load_preset("tiny").model, memory_gib=0.01, gflops_per_token=0.01)
    assert set(check) >= {"joint", "memory_only", "compute_only", "agrees", "summary"}
    assert check["agrees"] == (
        check["moderate_sparsity"] and check["fine_grained"] and check["shared_experts"]
    )
    assert "sparsity" in check["summary"]
    # margins: the best design without each property is never better than the optimum, and
    # a margin below the fit's leave-one-out miss is called a tie
    margins = check["margins_nats"]
    assert all(v is None or v >= -1e-9 for v in margins.values())
    assert check["noise_nats"] == pytest.approx(law["loo_median_rel_err"] * sum(law["loss_range"]) / 2)
    assert check["ties"] == [k for k, v in margins.items() if v is not None and v < check["noise_nats"]]
    assert "leave-one-out miss" in check["summary"]


def test_figures(law, sweep_records, tmp_path):
    from mobilemoe.scaling.plots import render

    chosen = design(law, load_preset("tiny").model, memory_gib=0.01, gflops_per_token=0.01)
    paths = render(sweep_records, law, chosen, tmp_path)
    assert [p.name for p in paths] == [
        "loss_vs_active_params.png",
        "iso_loss_sparsity_granularity.png",
        "loss_vs_int4_memory.png",
    ]
    assert all(p.stat().st_size > 5000 for p in paths)

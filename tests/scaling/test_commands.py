"""`mobilemoe scaling fit` and `mobilemoe design` from the command line."""

from __future__ import annotations

import json

import pytest

from mobilemoe.cli import main


@pytest.fixture
def records_file(sweep_records, tmp_path):
    path = tmp_path / "records.json"
    records = [dict(r) for r in sweep_records]
    records[0].update(status="failed", reason="killed", val_loss=None)
    path.write_text(json.dumps({"records": records}))
    return path


def test_scaling_fit_json(records_file, capsys):
    assert main(["scaling", "fit", "--records", str(records_file), "--json", "--bootstrap", "5"]) == 0
    law = json.loads(capsys.readouterr().out)
    for key in (
        "form",
        "params",
        "intervals",
        "r2",
        "loo_median_rel_err",
        "n_points",
        "loss_spread",
        "loo_const_median_rel_err",
        "extrapolation",
        "excluded",
        "ranges",
    ):
        assert key in law
    assert law["n_points"] == 29 and law["excluded"][0]["reason"] == "failed: killed"
    assert law["source"] == str(records_file)


def test_scaling_fit_text_and_refusals(law_file, records_file, tmp_path, capsys):
    assert main(["scaling", "fit", "--records", str(records_file), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "loo_median_rel_err" in out and "extrapolation" in out and "excluded" in out
    few = tmp_path / "few.json"
    few.write_text(json.dumps(json.loads(records_file.read_text())["records"][:6]))
    assert main(["scaling", "fit", "--records", str(few)]) == 2
    assert "the law needs at least 10" in capsys.readouterr().err
    assert main(["scaling", "fit", "--records", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_design_warns_when_it_extrapolates(law_file, capsys):
    args = [
        "design",
        "--preset",
        "mobilemoe-s",
        "--law",
        str(law_file),
        "--memory-gib",
        "3",
        "--gflops-per-token",
        "2.5",
        "--top",
        "2",
    ]
    assert main(args + ["--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["extrapolated"] is True and len(out["candidates"]) == 2
    assert "warning: active_params" in cap.err and "outside the range the law was fitted on" in cap.err
    assert set(out["best"]) >= {"model", "accounting", "predicted_loss"}
    assert main(args) == 0
    assert "best      sparsity" in capsys.readouterr().out


def test_design_budget_errors(law_file, tmp_path, capsys):
    base = ["design", "--preset", "tiny", "--law", str(law_file)]
    assert main(base + ["--memory-gib", "0.000001"]) == 2
    assert "no architecture fits" in capsys.readouterr().err
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"metrics": {"device_decode_bandwidth_gb_s": 5.0}}))
    args = base + ["--memory-gib", "0.01", "--active-params", "3000000", "--decode-tok-s", "1000", "--json"]
    assert main(args + ["--profile", str(profile)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budgets"]["bandwidth_gbs"] == 5.0 and out["best"]["predicted_decode_tok_s"] >= 1000
    profile.write_text("{}")
    assert main(args + ["--profile", str(profile)]) == 2
    assert "device_decode_bandwidth_gb_s" in capsys.readouterr().err

"""The flow's scaling stage without Metaflow: the smoke sweep's 4 points trained for real,
nested MLflow runs with their records, the stage cache, failures and divergence, the
skipped fit (too few points)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from mobilemoe import lineage as L
from mobilemoe.config import parse_params, preset_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tokenizer_file) -> Path:
    from train_helpers import _topics, write_text_shards

    root = tmp_path_factory.mktemp("scaling-data")
    texts = [t for _, t in _topics()]
    write_text_shards(root / "shards" / "pretrain", tokenizer_file, texts[: len(texts) * 3 // 4])
    import shutil

    shutil.copyfile(tokenizer_file, root / "tokenizer.json")
    return root


def _context(
    root: Path, data_root: Path, overrides: dict | None = None, mlflow: bool = True, store: Path | None = None
):
    from mobilemoe.pipeline import Context

    raw = yaml.safe_load(preset_path("smoke").read_text())
    raw["data"]["out_dir"] = str(data_root)
    raw["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["tracking"]["artifact_store"] = str(store or root / "artifacts")
    raw["runtime"]["threads"] = 1
    for key, value in (overrides or {}).items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    params = parse_params(raw, "params.yaml")
    tracker = L.Tracker(params, root) if mlflow else None
    run_id = tracker.start_run("pipeline test", {L.STAGE: "pipeline"}) if tracker else "no-run"
    ctx = Context(
        str(root),
        raw,
        run_id,
        "FullReproFlow/1/scaling/1",
        "code",
        {},
        data_version=None,  # no dvc.lock here: the data folder is the test's
        code_versions={"pretrain": "train-code"},
    )
    return ctx, tracker


def _sweep(ctx):
    from mobilemoe import pipeline

    plan = pipeline.scaling_plan(ctx)
    records = [r for group in plan.groups for r in pipeline.scaling_points(ctx, plan, group)]
    return plan, records


@pytest.fixture(scope="module")
def first(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("scaling-project")
    ctx, tracker = _context(root, data_root)
    plan, records = _sweep(ctx)
    return root, ctx, tracker, plan, records


def test_every_point_trains_into_its_own_nested_mlflow_run(first):
    from mobilemoe.pipeline.scaling import RECORD_TAG

    root, ctx, tracker, plan, records = first
    assert plan.n_points == 4 and len(plan.groups) == 2
    assert [r["status"] for r in records] == ["ok"] * 4
    for r in records:
        assert 3.0 < r["val_loss"] < 7.0  # a real, short run on real text (vocab 512: ln 512 = 6.24)
        assert r["accounting"]["active_params"] > r["active_params"]  # accounting includes embeddings
        run = tracker.get_run(r["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == plan.run_id  # under the scaling stage's run
        assert run.data.tags[L.STAGE] == "scaling_point"
        assert float(run.data.tags["mobilemoe.scaling.sparsity"]) == r["sparsity"]
        assert run.data.metrics["val_loss"] == pytest.approx(r["val_loss"])
        assert "arch.total_params" in run.data.metrics
        assert json.loads(run.data.tags[RECORD_TAG])["val_loss"] == pytest.approx(r["val_loss"])
        assert (
            root / "artifacts" / "stages" / "scaling_point" / r["key"][:16] / "output" / "model.safetensors"
        ).is_file()


def test_a_second_run_reuses_every_point_and_latest_records_reads_them_back(first, data_root):
    from mobilemoe import pipeline

    root, ctx, tracker, plan, records = first
    ctx2, _ = _context(root, data_root)
    plan2, again = _sweep(ctx2)
    assert all(r["reused"] for r in again)
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in records]
    for r in again:
        assert tracker.get_run(r["mlflow_run_id"]).data.tags[L.REUSED_FROM_RUN]
    back = pipeline.latest_records(ctx2.parsed, root)
    assert sorted(r["name"] for r in back) == sorted(r["name"] for r in records)
    assert {r["mlflow_run_id"] for r in back} == {r["mlflow_run_id"] for r in again}


def test_the_smoke_fit_is_skipped_with_the_reason_and_the_stage_run_ends(first):
    from mobilemoe import pipeline

    root, ctx, tracker, plan, records = first
    ref = pipeline.scaling_fit(ctx, plan, records)
    assert ref.status == "skipped" and "needs at least 10 ok points" in ref.reason
    assert ref.fit() is None and len(ref.records()) == 4
    assert all(Path(p).is_file() for p in ref.plots)
    run = tracker.get_run(plan.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mobilemoe.scaling.status"] == "skipped"
    assert pipeline.with_design(ctx, ref) is ctx  # model.source: params keeps the model


def test_model_source_scaling_without_a_fit_stops_with_the_reason(first, data_root, tmp_path):
    from mobilemoe import pipeline
    from mobilemoe.errors import UserError

    root, ctx, tracker, plan, records = first
    ctx2, _ = _context(root, data_root, {"model.source": "scaling"})
    plan2 = pipeline.scaling_plan(ctx2)
    with pytest.raises(UserError, match=r"model\.source: scaling needs a design .* needs at least 10"):
        pipeline.scaling_fit(ctx2, plan2, records)


def test_a_failed_point_is_recorded_and_retried_a_diverged_one_is_kept(
    first, tmp_path, data_root, monkeypatch
):
    import mobilemoe.train as train_mod
    from mobilemoe.train.loop import NonFiniteLoss

    root = first[0]  # the same MLflow store, an empty stage cache
    one = {"scaling.sweep.active_params": [30000]}
    ctx, tracker = _context(root, data_root, one, store=tmp_path / "artifacts")
    real = train_mod.run_stage

    def flaky(params, *args, **kwargs):
        if params.model.moe is None:
            raise RuntimeError("disk full")
        raise NonFiniteLoss(3, "loss is nan at step 3")

    monkeypatch.setattr(train_mod, "run_stage", flaky)
    _, records = _sweep(ctx)
    by = {r["name"].split("-", 1)[1]: r for r in records}
    assert by["dense"]["status"] == "failed" and "disk full" in by["dense"]["reason"]
    assert by["s4-g4-f0.5"]["status"] == "diverged" and "nan" in by["s4-g4-f0.5"]["reason"]
    assert tracker.get_run(by["dense"]["mlflow_run_id"]).info.status == "FAILED"
    monkeypatch.setattr(train_mod, "run_stage", real)
    ctx2, _ = _context(root, data_root, one, store=tmp_path / "artifacts")
    _, again = _sweep(ctx2)
    by2 = {r["name"].split("-", 1)[1]: r for r in again}
    assert by2["dense"]["status"] == "ok" and not by2["dense"]["reused"]  # the failure was retried
    assert by2["s4-g4-f0.5"]["status"] == "diverged" and by2["s4-g4-f0.5"]["reused"]  # divergence is kept


def test_model_source_scaling_hands_the_designed_model_to_later_stages(tmp_path, data_root):
    from mobilemoe.config import to_dict
    from mobilemoe.pipeline import ScalingRef, with_design
    from mobilemoe.pipeline.tracking import stage_tags
    from mobilemoe.scaling.shapes import make_model

    ctx, _ = _context(tmp_path, data_root, {"model.source": "scaling"}, mlflow=False)
    designed = make_model(
        ctx.parsed.model, active_params=120_000, sparsity=8, granularity=4, shared_fraction=0.5
    )
    design_file = tmp_path / "design.json"
    design_file.write_text(json.dumps({"best": {"model": to_dict(designed), "predicted_loss": 4.0}}))
    ref = ScalingRef(
        stage="scaling",
        key="k",
        run_id="scaling-run",
        produced_by_run_id="scaling-run",
        status="fitted",
        design_file=str(design_file),
    )
    after = with_design(ctx, ref)
    model = after.parsed.model
    assert (model.d_model, model.n_layers, model.moe.n_routed_experts) == (
        designed.d_model,
        designed.n_layers,
        designed.moe.n_routed_experts,
    )
    assert model.source == "scaling" and after.model_source_run_id == "scaling-run"
    assert stage_tags(after, "pretrain", "key", None, "code")[L.MODEL_SOURCE_RUN] == "scaling-run"
    assert ctx.parsed.model.d_model != model.d_model or ctx.parsed.model.moe != model.moe


def test_a_fitted_sweep_fills_the_card_and_is_cached_by_its_records(
    law, sweep_records, tmp_path, monkeypatch
):
    """The fit step on a fitted sweep (the synthetic one: the smoke sweep is too small to
    fit): law, design, paper check with margins and three figures in the card and the
    stage's files; the same records again reuse the fit instead of refitting."""
    from mobilemoe import cards
    from mobilemoe.pipeline import SweepPlan, scaling_fit
    from mobilemoe.scaling import law as law_mod

    ctx, tracker = _context(tmp_path, tmp_path, {"scaling.sweep.min_points_to_fit": 10})
    plan = SweepPlan(
        run_id=tracker.start_run("scaling", {L.STAGE: "scaling"}, ctx.pipeline_run_id),
        groups=[[]],
        n_points=len(sweep_records),
        train_tokens=1,
    )
    # the synthetic records, with accounting numbers of the size a real point carries
    # (INT4 g32 bytes ~ 0.5625 per weight; FLOPs at context 2048 well above 2 per weight)
    records = [
        {
            **r,
            "key": r["name"],
            "status": "ok",
            "accounting": {
                "int4_weight_bytes": int(r["total_params"] * 0.5625),
                "flops_per_token": int(40 * r["active_params"]),
            },
        }
        for r in sweep_records
    ]
    monkeypatch.setattr(law_mod, "fit", lambda recs, seed=0: law)  # the shared fixture's fit (fast)
    ref = scaling_fit(ctx, plan, records)
    assert ref.status == "fitted" and ref.reason is None
    chosen = ref.design()
    assert chosen["paper_check"]["margins_nats"] and "paper_check_in_range" in chosen
    assert [Path(p).name for p in ref.plots] == [
        "loss_vs_active_params.png",
        "iso_loss_sparsity_granularity.png",
        "loss_vs_int4_memory.png",
    ]
    card: list = []
    cards.scaling_card(card, ref)
    kinds = [type(c).__name__ for c in card]
    assert kinds.count("Image") == 3 and "Table" in kinds
    run = tracker.get_run(plan.run_id)
    assert run.data.metrics["loo_median_rel_err"] == pytest.approx(law["loo_median_rel_err"])
    assert run.data.tags["mobilemoe.scaling.status"] == "fitted"
    plan2 = SweepPlan(
        run_id=tracker.start_run("scaling", {L.STAGE: "scaling"}, ctx.pipeline_run_id),
        groups=[[]],
        n_points=len(sweep_records),
        train_tokens=1,
    )
    monkeypatch.setattr(law_mod, "fit", lambda recs, seed=0: pytest.fail("refitted the same records"))
    again = scaling_fit(ctx, plan2, records)
    assert again.reused and again.fit_file == ref.fit_file
    assert tracker.get_run(plan2.run_id).data.tags[L.REUSED_FROM_RUN] == plan.run_id

"""Environment identity: every stage run records the environment that ran it; two
environments that differ in one installed version are told apart; a reused cache entry
says which environment made it, and an environment change alone does not invalidate it."""

from __future__ import annotations

import json

import pytest

from mobilemoe import environment as E
from mobilemoe import lineage as L
from mobilemoe.config import load_preset, to_dict
from mobilemoe.pipeline import refs, stages


def test_the_environment_digest_covers_every_distribution(monkeypatch):
    env = E.environment()
    assert len(env["sha256"]) == 64 and env["python"] and env["torch"] and env["device"] == "cpu"
    assert env["n_distributions"] > 50  # the whole pinned stack, not just a few names
    dists = E.distributions()
    assert any(d.startswith("torch==") for d in dists) and dists == sorted(dists)
    # a teammate with one patch release different: another digest
    patched = [d if not d.startswith("numpy==") else "numpy==0.0.1" for d in dists]
    monkeypatch.setattr(E, "distributions", lambda: patched)
    E.environment.cache_clear()
    try:
        assert E.environment()["sha256"] != env["sha256"]
    finally:
        E.environment.cache_clear()


@pytest.fixture()
def ctx(tmp_path, monkeypatch):
    params = load_preset("smoke")
    monkeypatch.setenv("MOBILEMOE_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = L.Tracker(params, tmp_path)
    parent = tracker.start_run("pipeline", {L.STAGE: "pipeline"})
    return refs.Context(str(tmp_path), to_dict(params), parent, "F/1/s/1", "code", {}), tracker


def _stage(ctx, tracker, tmp_path, produced: list):
    def produce(run_id):
        produced.append(run_id)
        return {"results_files": {}, "summary": {"x": 1.0}}

    return stages._run_cached(
        ctx,
        tracker,
        refs.EvalRef,
        "eval",
        "k" * 64,
        tmp_path / "artifacts" / "stages" / "eval" / ("k" * 16),
        stages.stage_tags(ctx, "eval", "k" * 64, None, "code"),
        {},
        produce,
        check=lambda ref: True,
    )


def test_stage_runs_record_the_environment_and_reuse_names_the_one_that_made_it(ctx, tmp_path, monkeypatch):
    context, tracker = ctx
    produced: list = []
    first = _stage(context, tracker, tmp_path, produced)
    env = E.environment()
    assert first.environment["sha256"] == env["sha256"] and produced
    tags = tracker.get_run(first.run_id).data.tags
    assert tags[L.ENV_SHA256] == env["sha256"]
    assert json.loads(tags[L.ENV])["torch"] == env["torch"]
    # the same stage from another environment: reused (the digest is not part of the key),
    # its run says both environments
    other = {**env, "sha256": "0" * 64, "torch": "9.9.9"}
    monkeypatch.setattr(E, "environment", lambda device="auto": other)
    monkeypatch.setattr(stages, "environment", lambda device="auto": other)
    import mobilemoe.pipeline.tracking as T

    monkeypatch.setattr(T, "environment", lambda device="auto": other)
    again = _stage(context, tracker, tmp_path, produced)
    assert again.reused and len(produced) == 1
    tags = tracker.get_run(again.run_id).data.tags
    assert tags[L.REUSED_FROM_RUN] == first.run_id
    assert tags[L.ENV_SHA256] == "0" * 64  # the environment that reused it
    assert tags[L.REUSED_ENV_SHA256] == env["sha256"]  # the one that made it
    assert json.loads(tags[L.REUSED_ENV])["torch"] == env["torch"]
    assert again.environment["sha256"] == env["sha256"]


def test_a_cache_entry_found_in_another_folder_points_into_it(tmp_path):
    from mobilemoe.pipeline.cache import load_cached, save_cached

    a, b = tmp_path / "a" / "stages" / "eval" / "k", tmp_path / "b" / "stages" / "eval" / "k"
    ref = refs.EvalRef(
        stage="eval", key="k", run_id="r", produced_by_run_id="r", results_files={"pte": str(a / "res.json")}
    )
    save_cached(a, ref)
    b.mkdir(parents=True)
    (b / "stage.json").write_text((a / "stage.json").read_text())
    moved = load_cached(b, "k", refs.EvalRef, lambda r: True)
    assert moved is not None and moved.results_files == {"pte": str(b / "res.json")}
    assert moved.folder == str(b)

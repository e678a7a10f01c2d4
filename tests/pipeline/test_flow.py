"""``flows/full_repro.py`` end to end through Metaflow's Runner API, on the smoke preset, in a
throwaway copy of the project (its own git + DVC repository, datastore and MLflow store).

One run serves the checks (started with the session, ``flow_background``): every step
ran, cards were rendered, MLflow lineage links the stages and the ``.pte``, nothing
secret was recorded. A second run after
an ``eval`` param edit redoes only ``eval``; a run started with another Config file stops
at ``start``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import flow_background as FB
import pytest

STAGES = [
    "curate",
    "scaling",
    "pretrain",
    "midtrain",
    "sft",
    "qat",
    "export",
    "eval",
    "device_profile",
    "dense_baseline",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # The run's project, made when the session collected these tests (flow_background).
    root = FB.started_root() or FB.make_flow_project(tmp_path_factory.mktemp("flow") / "proj")
    helpers = FB.project_helpers()
    # Metaflow's local datastore and cards live in .metaflow/ of the working folder: the
    # flow runs there, and this process reads it from there too (its config may have been
    # imported by earlier tests, so no environment variable would reach it).
    env = FB.flow_env(root)
    saved = {k: os.environ.get(k) for k in (*env, *FB.DROP)}
    os.environ.update(env)
    for k in FB.DROP:
        os.environ.pop(k, None)
    cwd = os.getcwd()
    os.chdir(root)
    yield root, helpers
    os.chdir(cwd)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(root: Path, **top_level):
    from metaflow import Runner

    with Runner(
        str(root / "flows" / "full_repro.py"),
        show_output=False,
        env=dict(os.environ),
        cwd=str(root),
        **top_level,
    ).run() as running:
        return running.status, running.run, running.stdout, running.stderr


@pytest.fixture(scope="module")
def first_run(project):
    from metaflow import Run

    root, _ = project
    if FB.started_root() != root:  # not started with the session (e.g. a lone test run)
        status, run, out, err = _run(root)
        assert status == "successful", err[-4000:]
        return run
    done = FB.result()
    assert done["status"] == "successful", done["stderr"][-4000:]
    return Run(done["pathspec"], _namespace_check=False)


def _card_text(task) -> str:
    """A card's content: Metaflow embeds it in the HTML as base64-encoded JSON."""
    import base64
    import re

    from metaflow.cards import get_cards

    html = get_cards(task)[0].get()
    blobs = re.findall(r'__MF_DATA__\[[^\]]*\] = "([A-Za-z0-9+/=]+)"', html)
    assert blobs, "no card data in the HTML"
    return "\n".join(base64.b64decode(b).decode() for b in blobs)


def _children(root: Path, pipeline_run_id: str) -> dict:
    from mobilemoe import lineage as L
    from mobilemoe.config import load_params

    tracker = L.Tracker(load_params(root / "params.yaml"), root)
    runs = tracker.find_runs({L.PIPELINE_RUN: pipeline_run_id}, max_results=100)
    return tracker, {r.data.tags[L.STAGE]: r for r in runs}


def test_every_step_ran_with_cards_and_the_pte_exists(first_run, project):
    root, _ = project
    steps = {s.id for s in first_run.steps()}
    assert steps == {"start", *STAGES, "scaling_fit", "join", "end"}
    assert len(list(first_run["scaling"].tasks())) == 2  # the smoke sweep: 2 foreach tasks of 2 points
    scaling_text = _card_text(first_run["scaling_fit"].task)
    assert "fit skipped" in scaling_text and "needs at least 10 ok points" in scaling_text
    end = first_run["end"].task.data
    pte = Path(end.exported["pte"])
    assert pte.is_file() and pte.stat().st_size > 10_000
    hf = json.loads((pte.parent / "hf" / "config.json").read_text())  # the float model beside it
    assert hf["architectures"] == ["Glm4MoeForCausalLM"]
    for name in ("pretrain", "midtrain", "sft", "qat"):
        text = _card_text(first_run[name].task)
        assert "validation loss fell from" in text, name  # each stage's card says by how much
        assert "data:image/png;base64," in text  # the loss plot
    assert "MoE's validation loss is" in _card_text(first_run["dense_baseline"].task)
    device_text = _card_text(first_run["device_profile"].task)
    assert "device_decode_tok_per_s" in device_text and "device_decode_bandwidth_gb_s" in device_text
    # one decode step's operators (ETDump), the MoE's top-k kernel among them
    assert "slowest operators" in device_text and "moe_ffn_8da4w" in device_text
    assert "MoE / dense-active decode time" in _card_text(first_run["join"].task)
    assert "INT4 .pte (ExecuTorch)" in _card_text(first_run["eval"].task)
    for ref in (end.pretrained, end.midtrained, end.sft_model, end.qat_model):
        s = ref["summary"]
        assert s["last_val_loss"] < s["first_val_loss"], ref["stage"]
    assert end.profile["result"]["status"] == "ok"
    assert end.profile["summary"]["device_decode_tok_per_s"] > 0
    # the dense-active baseline was exported and profiled the same way
    dense = end.dense["profile"]
    assert dense["result"]["status"] == "ok" and dense["summary"]["device_decode_tok_per_s"] > 0
    assert (
        end.profile["summary"]["device_active_weight_bytes_per_token"]
        < end.profile["summary"]["device_total_weight_bytes"]
    )


def test_mlflow_lineage_links_every_stage_and_the_pte(first_run, project, capsys):
    from mobilemoe import lineage as L
    from mobilemoe.checkpoint import sha256_file
    from mobilemoe.cli import main

    root, _ = project
    end = first_run["end"].task.data
    tracker, runs = _children(root, end.ctx.pipeline_run_id)
    assert set(runs) == set(STAGES) | {"dense_profile"}
    # the sweep's points nest under the scaling run, each with its record
    points = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{runs['scaling'].info.run_id}'"
    )
    assert len(points) == 4 and all(p.data.tags[L.STAGE] == "scaling_point" for p in points)
    assert all(p.info.status == "FINISHED" and "val_loss" in p.data.metrics for p in points)
    assert runs["scaling"].data.tags["mobilemoe.scaling.status"] == "skipped"
    assert runs["dense_profile"].info.status == "FINISHED"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    for stage in ("pretrain", "midtrain", "sft", "qat", "export"):
        tags = runs[stage].data.tags
        assert tags[L.GIT_COMMIT] == commit
        assert json.loads(tags[L.DATA_VERSION]) == end.ctx.data_version
        assert tags[L.METAFLOW_PATHSPEC].startswith(f"FullReproFlow/{first_run.id}/{stage}/")
        assert runs[stage].info.status == "FINISHED"
    order = ["pretrain", "midtrain", "sft", "qat", "export"]
    for up, down in zip(order, order[1:]):
        assert runs[down].data.tags[L.INPUT_RUN_ID] == runs[up].info.run_id
        assert runs[down].data.tags[L.INPUT_CHECKPOINT_SHA256] == runs[up].data.tags[L.CHECKPOINT_SHA256]
    assert "val_loss" in runs["pretrain"].data.metrics or "last_val_loss" in runs["pretrain"].data.metrics
    # the .pte: a LoggedModel made by the export run, with the device profile as its metrics
    pte_sha = sha256_file(end.exported["pte"])
    models = tracker.client.search_logged_models(
        experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{L.PTE_SHA256}` = '{pte_sha}'"
    )
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == runs["export"].info.run_id
    assert model.tags[L.INPUT_RUN_ID] == runs["qat"].info.run_id  # linked to the QAT run
    assert model.params["quantization.group_size"] == "32"
    keys = {m.key for m in model.metrics}
    assert {
        "device_decode_tok_per_s",
        "device_active_weight_bytes_per_token",
        "device_total_weight_bytes",
        "device_decode_bandwidth_gb_s",
    } <= keys
    # and the command walks back from the phone's program to the first stage
    capsys.readouterr()
    assert (
        main(["lineage", "--pte", end.exported["pte"], "--json", "--params", str(root / "params.yaml")]) == 0
    )
    chain = json.loads(capsys.readouterr().out)
    assert [n["stage"] for n in chain] == ["export", "qat", "sft", "midtrain", "pretrain"]


def test_nothing_secret_is_recorded(first_run, project):
    root, _ = project
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and ".venv" not in path.parts and path.stat().st_size < 50_000_000:
            if FB.SECRET.encode() in path.read_bytes():
                hits.append(str(path))
    assert hits == []


@pytest.mark.slow  # ~100 s: a second whole flow run (keys: tests/pipeline/test_stage_keys.py)
def test_param_edit_redoes_only_the_affected_stage(first_run, project):
    from mobilemoe import lineage as L

    root, helpers = project
    helpers.set_param(root, "eval.limit", 5)
    # a setting the trainer resumes across: pretrain (and the dense baseline) stay reused
    helpers.set_param(root, "pretrain.eval_every", 3)
    status, run, out, err = _run(root)
    assert status == "successful", err[-4000:]
    end = run["end"].task.data
    _, runs = _children(root, end.ctx.pipeline_run_id)
    reused = {s for s, r in runs.items() if L.REUSED_FROM_RUN in r.data.tags}
    assert reused == {
        "scaling",  # the same points: the fit's cache entry
        "pretrain",
        "midtrain",
        "sft",
        "qat",
        "export",
        "device_profile",
        "dense_baseline",
        "dense_profile",
    }
    first = first_run["end"].task.data
    assert end.qat_model["checkpoint_sha256"] == first.qat_model["checkpoint_sha256"]
    assert runs["qat"].data.tags[L.REUSED_FROM_RUN] == first.qat_model["run_id"]
    assert end.exported["model_id"] == first.exported["model_id"]  # the same program, one model
    results = json.loads(Path(end.evaluated["results_files"]["pte"]).read_text())
    assert {r["n"] for r in results["tasks"].values()} == {5}


def test_a_run_with_another_config_file_stops_at_start(first_run, project, tmp_path):
    root, _ = project
    other = tmp_path / "other.yaml"
    other.write_text((root / "params.yaml").read_text().replace("\n  steps: ", "\n  steps: 1", 1))
    status, run, out, err = _run(root, config=[("config", str(other))])
    assert status == "failed"
    assert [s.id for s in run.steps()] == ["start"]
    log = run["start"].task.stderr
    assert "this run's Config differs from" in log and str(root / "params.yaml") in log
    assert "pretrain.steps" in log  # names the key that differs

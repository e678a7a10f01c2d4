"""MLflow lineage: tags link stage runs; `mobilemoe lineage` walks them back."""

from __future__ import annotations

import json

import pytest

from mobilemoe import lineage as L
from mobilemoe.cli import main
from mobilemoe.config import load_preset


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    params = load_preset("smoke")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MOBILEMOE_ROOT", str(tmp_path))
    return L.Tracker(params, tmp_path)


def test_default_store_is_a_sqlite_file_in_the_project(tracker, tmp_path):
    assert tracker.uri == f"sqlite:///{tmp_path / '.mlflow' / 'mlflow.db'}"
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (tmp_path / ".mlflow" / "artifacts").as_uri()


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    params = load_preset("smoke", ["tracking.uri=http://mlflow.example:5000"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert L.tracking_uri(params, tmp_path) == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://other:5000")
    assert L.tracking_uri(params, tmp_path) == "http://other:5000"
    assert L._redact("https://user:pw@host/x") == "https://***@host/x"


def test_walk_back_through_stages(tracker, tmp_path, capsys, monkeypatch):
    parent = tracker.start_run("pipeline", {L.STAGE: "pipeline"})
    data = {"data/shards/pretrain": "abc"}
    prev = None
    ids = {}
    for i, stage in enumerate(["pretrain", "midtrain", "sft", "qat"]):
        tags = {
            L.STAGE: stage,
            L.CHECKPOINT_SHA256: f"sha{i}",
            L.INPUT_RUN_ID: prev,
            L.INPUT_CHECKPOINT_SHA256: f"sha{i - 1}" if i else None,
            L.GIT_COMMIT: "c0ffee",
            **L.data_version_tags(data),
        }
        prev = tracker.start_run(stage, tags, parent_run_id=parent)
        tracker.log_params(prev, {f"{stage}.lr": 0.001 * (i + 1)})
        ids[stage] = prev
    from mobilemoe.commands.lineage import walk

    chain = walk(tracker, ids["qat"])
    assert [n["stage"] for n in chain] == ["qat", "sft", "midtrain", "pretrain"]
    assert chain[0]["input_checkpoint_sha256"] == "sha2" and chain[-1]["checkpoint_sha256"] == "sha0"
    assert json.loads(chain[0]["data_version"]) == data
    assert chain[1]["params"] == {"sft.lr": "0.003"}
    # child runs hang off the parent
    kids = tracker.find_runs({"mlflow.parentRunId": parent})
    assert len(kids) == 4
    # the CLI prints the same chain
    import yaml

    from mobilemoe.config.base import to_dict

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(load_preset_from_repo())))
    assert main(["lineage", "--run", ids["qat"], "--params", str(tmp_path / "params.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [n["stage"] for n in out] == ["qat", "sft", "midtrain", "pretrain"]


def load_preset_from_repo():
    from pathlib import Path

    from mobilemoe.config import load_params

    return load_params(Path(__file__).resolve().parents[2] / "presets" / "smoke.yaml")


def test_code_version_changes_with_sources(tmp_path):
    (tmp_path / "mobilemoe").mkdir()
    (tmp_path / "mobilemoe" / "a.py").write_text("x = 1\n")
    v1 = L.code_version(tmp_path)
    (tmp_path / "mobilemoe" / "a.py").write_text("x = 2\n")
    assert L.code_version(tmp_path) != v1


def test_tag_names_are_documented():
    text = (L.project_root() / "docs" / "lineage.md").read_text()
    missing = [t for t in L.ALL_TAGS if t not in text]
    assert not missing, f"docs/lineage.md does not document {missing}"

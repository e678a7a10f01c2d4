"""The DVC pipeline end to end on the smoke preset, in a throwaway copy of the project:
outputs others read, reruns limited to what a param change affects, a clean status after,
the data version, and `dvc push` to the default local remote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobilemoe.config import load_params
from mobilemoe.data import DataError, curate, data_version
from mobilemoe.data.paths import data_paths
from mobilemoe.data.shards import TokenShards
from mobilemoe.data.tokenizer import file_sha256, load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from project import make_project, set_param  # noqa: E402

# DVC 3.67 warns about its own use of a pygtrie API; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("proj"), "smoke")
    result = curate(root)
    return root, result


def _status(root: Path) -> dict:
    import contextlib

    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        return repo.status()


def test_first_run_builds_everything(project):
    root, result = project
    assert result["stages_run"] == ["sources", "evalgrams", "clean", "tokenizer", "shards"]
    params = load_params(root / "params.yaml")
    paths = data_paths(params, root)
    tok = load_tokenizer(paths.tokenizer, params.model.vocab_size)
    assert tok.get_vocab_size() == params.model.vocab_size == 512
    for mix in ("pretrain", "midtrain", "sft"):
        shards = TokenShards(paths.mix(mix), verify=True)
        assert len(shards.train) > 1000 and len(shards.val) > 0
        assert shards.meta["tokenizer_sha256"] == file_sha256(paths.tokenizer)
    assert TokenShards(paths.sft).train.mask is not None
    h = result["stats"]["headline"]
    assert h["pretrain_clean_bytes"] > 200_000 and h["sft_pairs"] > 250
    assert result["stats"]["clean"]["pretrain"]["filters"]["near_dup"]["kept"] > 0
    assert result["stats_path"] == str(paths.stats)
    version = data_version(root)
    assert set(version) >= {
        "data/raw",
        "data/clean",
        "data/tokenizer.json",
        "data/shards",
        "data/evalgrams.npz",
        "data/stats.json",
    }
    assert version["data/shards"].endswith(".dir") and len(version["data/tokenizer.json"]) == 32


def test_clean_status_and_noop_rerun(project):
    root, _ = project
    assert _status(root) == {}
    assert curate(root)["stages_run"] == []


def test_param_change_reruns_only_affected_stages(project):
    root, _ = project
    before = data_version(root)
    set_param(root, "data.midtrain.quality_fraction", 0.3)
    assert curate(root)["stages_run"] == ["shards"]
    set_param(root, "model.vocab_size", 600)
    assert curate(root)["stages_run"] == ["tokenizer", "shards"]
    assert (
        load_tokenizer(data_paths(load_params(root / "params.yaml"), root).tokenizer).get_vocab_size() == 600
    )
    set_param(root, "data.clean.min_chars", 300)
    ran = curate(root)["stages_run"]
    assert ran[0] == "clean" and "sources" not in ran and "evalgrams" not in ran
    assert _status(root) == {}
    after = data_version(root)
    assert (
        after["data/raw"] == before["data/raw"]
        and after["data/evalgrams.npz"] == before["data/evalgrams.npz"]
    )
    assert after["data/shards"] != before["data/shards"]


def test_push_to_the_default_local_remote(project):
    from mobilemoe.data.remote import configure_remote, push

    root, _ = project
    params = load_params(root / "params.yaml")
    info = configure_remote(root, params.data.remote)
    assert info["kind"] == "local" and Path(info["url"]) == root / ".dvc" / "store"
    config = (root / ".dvc" / "config").read_text()
    assert "url = store" in config and "remote = store" in config  # relative: portable
    assert push(root) > 0
    stored = [p for p in (root / ".dvc" / "store").rglob("*") if p.is_file()]
    assert len(stored) >= 10
    assert push(root) == 0  # nothing new


def test_params_path_must_be_the_projects(project, tmp_path):
    root, _ = project
    other = tmp_path / "params.yaml"
    other.write_text((root / "params.yaml").read_text())
    with pytest.raises(DataError, match="DVC reads the project's params.yaml"):
        curate(root, params_path=other)


def test_bad_source_stops_the_stage_with_one_message(tmp_path):
    root = make_project(
        tmp_path / "p",
        "smoke",
        {"data.sources": [{"name": "mine", "kind": "files", "paths": ["corpus/*.txt"]}]},
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [str(root / "scripts" / "py"), "-m", "mobilemoe.data.stages", "sources"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: data.sources[0] (mine): no file matches")
    assert "corpus/*.txt" in lines[0]
    with pytest.raises(DataError, match="dvc repro .* failed"):
        curate(root)
    assert not (root / "data" / "raw" / "pretrain.jsonl").exists()


def test_cli_stats_and_version(project):
    root, _ = project
    env = {**os.environ, "MOBILEMOE_ROOT": str(root)}
    py = [sys.executable, "-m", "mobilemoe.cli", "data"]
    out = subprocess.run(py + ["stats"], env=env, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and "pre-training text:" in out.stdout and "near_dup" in out.stdout
    out = subprocess.run(py + ["version"], env=env, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and "data/shards" in out.stdout
    empty = root.parent / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "params.yaml").write_text((root / "params.yaml").read_text())
    out = subprocess.run(
        py + ["stats"], env={**env, "MOBILEMOE_ROOT": str(empty)}, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "stats.json: missing" in out.stderr


def test_push_and_pull_through_a_real_s3_server(project, s3_server, monkeypatch):
    """dvc push/pull against SeaweedFS on 127.0.0.1; keys only in the env / config.local."""
    import shutil

    from mobilemoe.config.data import RemoteConfig
    from mobilemoe.data.remote import configure_remote, pull, push

    root, _ = project
    s3_server.client().create_bucket(Bucket="mobilemoe-data")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MOBILEMOE_S3_ENDPOINT_URL", s3_server.endpoint)  # env beats params
    cfg = RemoteConfig(name="s3store", url="s3://mobilemoe-data/dvc", endpoint_url=None)
    info = configure_remote(root, cfg, store_credentials=True)
    assert info == {
        "name": "s3store",
        "url": "s3://mobilemoe-data/dvc",
        "endpoint_url": s3_server.endpoint,
        "kind": "s3",
    }
    committed = (root / ".dvc" / "config").read_text()
    assert s3_server.endpoint in committed and "s3://mobilemoe-data/dvc" in committed
    assert s3_server.secret_key not in committed and s3_server.access_key not in committed
    assert s3_server.secret_key in (root / ".dvc" / "config.local").read_text()
    ignored = subprocess.run(["git", "check-ignore", ".dvc/config.local"], cwd=root)
    assert ignored.returncode == 0  # never committed

    assert push(root) > 0
    keys = [
        o["Key"]
        for o in s3_server.client().list_objects_v2(Bucket="mobilemoe-data", Prefix="dvc/")["Contents"]
    ]
    assert len(keys) >= 10

    before = data_version(root)
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)  # pull finds the keys in .dvc/config.local
    assert pull(root) > 0
    assert _status(root) == {} and data_version(root) == before
    TokenShards(data_paths(load_params(root / "params.yaml"), root).pretrain, verify=True)

"""Remote steps: per-step compute from params, the code package (checked with Metaflow's
packaging API), the git commit recorded at launch, and the checks ``start`` makes of the
shared stores (unreachable endpoints fail fast, naming the URL, never the credentials).
The package running smoke's pretrain in an empty folder is marked slow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobilemoe.config import ConfigError, load_preset
from mobilemoe.config.compute import step_decorators
from mobilemoe.pipeline.stores import StoreError, check_stores

ROOT = Path(__file__).resolve().parents[2]
SECRET = "planted-remote-secret-5e6f"


def test_each_step_goes_where_params_say_and_local_adds_nothing():
    params = load_preset("smoke")
    assert all(step_decorators(params.compute, s) == [] for s in ("start", "pretrain", "eval", "join", "end"))
    edited = load_preset(
        "smoke",
        [
            "tracking.artifact_store=s3://b/cache",
            "compute.pretrain.target=kubernetes",
            "compute.pretrain.gpu=1",
            "compute.image=registry.example/mobilemoe:1",
            "compute.eval.target=batch",
        ],
    )
    assert step_decorators(edited.compute, "pretrain") == [
        ("resources", {"cpu": 2, "memory": 8192, "gpu": 1}),
        ("kubernetes", {"image": "registry.example/mobilemoe:1"}),
    ]
    assert [d for d, _ in step_decorators(edited.compute, "eval")] == ["resources", "batch"]
    assert step_decorators(edited.compute, "midtrain") == []
    assert step_decorators(edited.compute, "start") == []


def test_a_remote_step_needs_an_s3_stage_cache_and_its_ranks_gpus():
    with pytest.raises(ConfigError, match=r"compute\.sft\.target.*s3://"):
        load_preset("smoke", ["compute.sft.target=kubernetes"])
    with pytest.raises(ConfigError, match=r"compute\.pretrain\.gpu"):
        load_preset(
            "smoke",
            [
                "tracking.artifact_store=s3://b/p",
                "compute.pretrain.target=kubernetes",
                "compute.pretrain.gpu=1",
                "pretrain.nproc=2",
            ],
        )


def _package(tmp_path: Path, flow_root: Path = ROOT) -> Path:
    """Save the flow's code package with Metaflow's CLI and extract it with its packaging API."""
    from metaflow.package import MetaflowPackage

    blob = tmp_path / "package.tgz"
    env = {**os.environ, "USERNAME": "mobilemoe-test", "MOBILEMOE_ROOT": str(flow_root)}
    out = subprocess.run(
        [sys.executable, str(flow_root / "flows" / "full_repro.py"), "package", "save", str(blob)],
        cwd=flow_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    dest = tmp_path / "empty"
    dest.mkdir()
    meta = json.dumps({"version": 0, "archive_format": "tgz", "mfcontent_version": 1})
    MetaflowPackage.cls_extract_into(meta, io.BytesIO(blob.read_bytes()), str(dest))
    return dest


def test_the_code_package_carries_the_library_and_what_steps_read(tmp_path):
    dest = _package(tmp_path)
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    for needed in (
        "full_repro.py",
        "flow_compute.py",
        "mobilemoe/pipeline/stages.py",
        "mobilemoe/config/compute.py",
        "mobilemoe/data/corpus/cpython-3.11.7.jsonl.gz",
        "device_lab/runner.py",
        "mobilemoe_kernels/csrc/moe_ffn.cpp",
        "params.yaml",
        "presets/smoke.yaml",
        "dvc.yaml",
        "dvc.lock",
        "scripts/py",
        "launch.json",
    ):
        assert needed in files, needed
    assert not any(f.startswith((".venv/", "data/", "artifacts/", ".mlflow/", ".git/")) for f in files)
    assert not any(f.endswith((".pyc", ".so")) for f in files)
    assert (dest / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    # the launch record: the commit of the checkout that launched, for steps without .git
    from mobilemoe import lineage as L

    launch = json.loads((dest / "launch.json").read_text())
    assert launch[L.GIT_COMMIT] == L.git_info(ROOT)[L.GIT_COMMIT] != "unknown"
    assert L.git_info(dest) == launch


def test_unreachable_stores_fail_fast_with_the_url_and_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTED0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    params = load_preset("smoke", ["tracking.artifact_store=s3://mm-cache/stages"])
    t0 = time.time()
    with pytest.raises(StoreError) as e:
        check_stores(params, "sqlite:///x.db", "s3")
    msg = str(e.value)
    assert "http://127.0.0.1:9" in msg and "tracking.artifact_store=s3://mm-cache/stages" in msg
    assert SECRET not in msg and "AKIAPLANTED0001" not in msg
    with pytest.raises(StoreError) as e:
        check_stores(load_preset("smoke"), f"http://user:{SECRET}@127.0.0.1:9", None)
    msg = str(e.value)
    assert "cannot reach the MLflow tracking server http://***@127.0.0.1:9" in msg and SECRET not in msg
    assert time.time() - t0 < 30
    # Metaflow's datastore must agree with a shared stage cache
    monkeypatch.setattr("mobilemoe.pipeline.stores.check_bucket", lambda url, key: None)
    with pytest.raises(StoreError, match="METAFLOW_DEFAULT_DATASTORE=s3"):
        check_stores(params, "sqlite:///x.db", "local")
    check_stores(params, "sqlite:///x.db", "s3")
    check_stores(load_preset("smoke"), "sqlite:///x.db", "local")  # the embedded default: nothing to check


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("project_helpers", ROOT / "tests" / "data" / "project.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~2 min: curates smoke's data, then trains its pretrain stage from the package
def test_the_package_alone_runs_smoke_pretrain_in_an_empty_folder(tmp_path):
    """A remote node's view: the extracted code package in an empty folder, the data version
    pulled through DVC from the remote, the pretrain stage run, the launch commit recorded."""
    import shutil

    helpers = _helpers()
    remote = tmp_path / "dvc-remote"
    project = helpers.make_project(tmp_path / "proj", "smoke", {"data.remote.url": str(remote)})
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "device_lab", project / "device_lab", ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".gitignore").write_text("/data/\n.venv\n/artifacts/\n/.mlflow/\n/.metaflow/\n")
    env = {**os.environ, "USERNAME": "mobilemoe-test", "MOBILEMOE_ROOT": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = {"cwd": project, "env": env, "check": True, "capture_output": True, "timeout": 900}
    py = [sys.executable, "-c"]
    curate = (
        "from mobilemoe.data import curate; from mobilemoe.data.remote import configure_remote, push;"
        "from mobilemoe.config import load_params; curate();"
        "configure_remote('.', load_params('params.yaml').data.remote); push('.')"
    )
    subprocess.run([*py, curate], **run)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["add", "-A"], **run)
    subprocess.run(git + ["commit", "-qm", "project"], **run)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], **run, text=True).stdout.strip()
    lock = (project / "dvc.lock").read_text()
    dest = _package(tmp_path, project)
    assert not (dest / "data").exists() and not (dest / ".dvc").exists()
    # what the flow's pretrain step does there: the run's context (from start and curate),
    # the data pulled, the stage trained
    script = f"""
import json, yaml
from mobilemoe import pipeline, lineage as L
from mobilemoe.config import read_yaml
from mobilemoe.data import data_version
root = {str(dest)!r}
raw = read_yaml(root + '/params.yaml')
tracker = L.Tracker(pipeline.Context(root, raw, '', '', '', {{}}).parsed)
parent = tracker.start_run('pipeline', {{}})
lock = yaml.safe_load({lock!r})
version = {{o['path']: o['md5'] for s in lock['stages'].values() for o in s['outs']}}
ctx = pipeline.Context(root, raw, parent, 'FullReproFlow/1/pretrain/2', L.code_version(),
                       L.git_info(), code_versions={{}}, dvc_lock=lock, data_version=version)
ref = pipeline.train_stage(ctx, 'pretrain', None)
tags = tracker.get_run(ref.run_id).data.tags
print(json.dumps({{'checkpoint': ref.checkpoint, 'commit': tags[L.GIT_COMMIT],
                  'loss': ref.summary['last_val_loss'], 'data': data_version(root) == ctx.data_version}}))
"""
    clean_env = {k: v for k, v in env.items() if k not in ("MOBILEMOE_ROOT", "PYTHONPATH")}
    clean_env.update({"MOBILEMOE_ROOT": str(dest), "USERNAME": "mobilemoe-test"})
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=dest, env=clean_env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["data"] and result["commit"] == commit
    assert Path(result["checkpoint"]).is_relative_to(dest) and result["loss"] > 0

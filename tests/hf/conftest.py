"""Fixtures for the Hugging Face tests: tiny checkpoints (the tiny preset and variants),
each trained for a few seconds and exported once per session."""

from __future__ import annotations

import pytest
from hf_helpers import make_checkpoint


@pytest.fixture(scope="session")
def hf_variant(tmp_path_factory, tokenizer_file):
    """``hf_variant(name) -> (checkpoint, hf folder)``, made once per variant."""
    from mobilemoe.hf import export_hf

    made: dict = {}

    def get(name: str):
        if name not in made:
            root = tmp_path_factory.mktemp(f"hf-{name}")
            ckpt = make_checkpoint(root / "ckpt", tokenizer_file, name)
            export_hf(ckpt, root / "hf")
            made[name] = (ckpt, root / "hf")
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_export(hf_variant):
    return hf_variant("tiny")

"""The tiny preset's four-stage recipe on CPython's own text (slow: minutes on 2 cores).

The loss-curve regression of the embedded default: pretraining must end at validation
loss <= 70% of ln(vocab) (the issue's bar), and validation loss must fall in every stage.
The pipeline runs the same on the curated data (``dvc repro``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from train_helpers import cpython_documents, smoke_params, write_text_shards

from mobilemoe.train import run_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mobilemoe.checkpoint import sha256_file
    from mobilemoe.data.shards import ShardWriter
    from mobilemoe.data.tokenizer import encode_chat, train_tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    docs = cpython_documents()
    tok = train_tokenizer(docs, 4096)
    tok.save(str(root / "tokenizer.json"))
    write_text_shards(root / "shards" / "pretrain", root / "tokenizer.json", docs, 4096, val_every=20)
    write_text_shards(root / "shards" / "midtrain", root / "tokenizer.json", docs[::2], 4096, val_every=20)
    # SFT: the chatterbot-corpus conversations (a project dependency), as curation uses them.
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    english = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    pairs = []
    for path in sorted(english.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text())["conversations"]:
            pairs += [encode_chat(tok, str(a), str(b)) for a, b in zip(conv, conv[1:])]
    w = ShardWriter(root / "shards" / "sft", 4096)
    for split, keep in (("train", lambda i: i % 20), ("val", lambda i: i % 20 == 0)):
        chosen = [p for i, p in enumerate(pairs) if keep(i)]
        w.add_split(split, [np.array(p[0]) for p in chosen], masks=[np.array(p[1]) for p in chosen])
    w.close(tokenizer_sha256=sha256_file(root / "tokenizer.json"))
    return root


def test_tiny_four_stages(tiny_data, tmp_path):
    params = smoke_params("runtime.threads=2", preset="tiny")
    init, results = None, {}
    # All four stages, QAT included: if mobilemoe.quant cannot import, this fails loudly.
    for stage in ("pretrain", "midtrain", "sft", "qat"):
        r = run_stage(
            params, stage, data_dir=tiny_data, out_dir=tmp_path / stage, init_checkpoint=init, progress=False
        )
        results[stage] = r
        init = r.checkpoint
        s = r.summary()
        print(
            f"{stage}: val {s['first_val_loss']:.3f} -> {s['last_val_loss']:.3f} in "
            f"{s['train_s']:.0f} s, {s.get('tok_per_s', 0):.0f} tok/s"
        )
        assert s["last_val_loss"] < s["first_val_loss"], stage
    assert results["pretrain"].summary()["last_val_loss"] <= 0.7 * math.log(4096)

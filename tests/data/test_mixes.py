"""Packed shards of the three mixes: document framing, splits, SFT loss masks, midtrain
selection/weights, meta.json, and no valid-looking output after an interrupted write."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mobilemoe.config.data import DataConfig
from mobilemoe.data import mixes
from mobilemoe.data.mixes import build_mixes, is_val
from mobilemoe.data.paths import data_paths
from mobilemoe.data.shards import ShardError, TokenShards
from mobilemoe.data.tokenizer import file_sha256, load_tokenizer
from mobilemoe.tokens import ASSISTANT_ID, BOS_ID, EOS_ID


class _P:  # the two attributes data_paths reads
    class data:
        out_dir = "data"


@pytest.fixture
def inputs(tmp_path, tokenizer_file):
    from pydoc_data.topics import topics

    rng = random.Random(0)
    texts = [t[:1500] for k, t in sorted(topics.items()) if len(t) > 400]
    docs = [
        {
            "id": f"{'a' if i % 3 else 'b'}:{i}",
            "doc": f"x:{i}",
            "text": t,
            "source": "alpha" if i % 3 else "beta",
            "licence": "L1" if i % 3 else "L2",
            "quality": round(rng.random(), 3),
        }
        for i, t in enumerate(texts)
    ]
    pairs = [
        {
            "id": f"chat:{i}",
            "prompt": f"Question number {i}?",
            "response": f"Answer {i}.",
            "source": "chat",
            "licence": "BSD",
        }
        for i in range(300)
    ]
    tok = load_tokenizer(tokenizer_file, 512)
    return docs, pairs, tok, file_sha256(tokenizer_file), data_paths(_P, tmp_path)


def test_mixes(inputs):
    docs, pairs, tok, sha, paths = inputs
    cfg = DataConfig(val_fraction=0.1, seed=7)
    cfg.midtrain.quality_fraction = 0.5
    cfg.midtrain.source_weights = {"beta": 2.0, "alpha": 1.0}
    build_mixes(docs, pairs, tok, sha, cfg, paths)

    pre = TokenShards(paths.pretrain, verify=True)
    assert pre.vocab_size == 512 and pre.dtype == np.uint16
    n_train, n_val = pre.meta["splits"]["train"]["documents"], pre.meta["splits"]["val"]["documents"]
    assert n_train + n_val == len(docs) and 0 < n_val < 0.25 * len(docs)
    t = np.asarray(pre.train.tokens)
    assert t[0] == BOS_ID and t[-1] == EOS_ID
    assert (t == BOS_ID).sum() == n_train and (t == EOS_ID).sum() == n_train
    assert pre.train.mask is None
    assert pre.meta["tokenizer_sha256"] == sha
    assert set(pre.meta["source_mix"]["train"]) == {"alpha", "beta"}
    assert pre.meta["licences"] == ["L1", "L2"]
    val_ids = {d["id"] for d in docs if is_val(d["id"], 0.1, 7)}
    assert len(val_ids) == n_val

    mid = TokenShards(paths.midtrain)
    train_docs = [d for d in docs if d["id"] not in val_ids]
    top = mixes.select_midtrain(train_docs, 0.5)
    assert min(d["quality"] for d in top) >= max(d["quality"] for d in train_docs if d not in top)
    expect = sum(2 if d["source"] == "beta" else 1 for d in top)
    assert mid.meta["splits"]["train"]["documents"] == expect
    assert mid.meta["source_weights"] == {"beta": 2.0, "alpha": 1.0}

    sft = TokenShards(paths.sft)
    ids, mask = np.asarray(sft.train.tokens), np.asarray(sft.train.mask)
    assert len(ids) == len(mask) and sft.meta["splits"]["train"]["loss_tokens"] == int(mask.sum())
    starts = np.flatnonzero(ids == BOS_ID)
    assert len(starts) == sft.meta["splits"]["train"]["documents"]
    for s, e in zip(starts, list(starts[1:]) + [len(ids)]):
        a = s + int(np.flatnonzero(ids[s:e] == ASSISTANT_ID)[0])
        assert mask[s : a + 1].sum() == 0 and mask[a + 1 : e].all() and ids[e - 1] == EOS_ID


def test_sft_fraction_mixes_chat_text_into_midtrain(inputs):
    docs, pairs, tok, sha, paths = inputs
    cfg = DataConfig()
    cfg.midtrain.sft_fraction = 0.2
    build_mixes(docs, pairs, tok, sha, cfg, paths)
    mix = TokenShards(paths.midtrain).meta["source_mix"]["train"]
    share = mix["chat"]["docs"] / sum(v["docs"] for v in mix.values())
    assert 0.15 < share < 0.25


def test_interrupted_write_leaves_no_valid_mix(inputs, monkeypatch):
    docs, pairs, tok, sha, paths = inputs
    build_mixes(docs, pairs, tok, sha, DataConfig(), paths)  # a complete earlier build
    calls = {"n": 0}
    real = mixes.encode_chat

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt  # killed half-way through the sft mix
        return real(*a)

    monkeypatch.setattr(mixes, "encode_chat", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_mixes(docs, pairs, tok, sha, DataConfig(), paths)
    TokenShards(paths.pretrain, verify=True)  # finished mixes are complete and valid
    with pytest.raises(ShardError, match="not finished"):
        TokenShards(paths.sft)  # the interrupted one is never read as valid
    assert not list(paths.sft.glob("*.tmp*"))
    meta = json.loads((paths.pretrain / "meta.json").read_text())
    assert meta["mix"] == "pretrain"

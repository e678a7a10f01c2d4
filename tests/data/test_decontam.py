"""Decontamination: every planted evaluation passage is removed from the training text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mobilemoe.config import load_preset
from mobilemoe.config.data import DataConfig
from mobilemoe.data.curation import clean_pretrain
from mobilemoe.data.decontam import EvalNgramIndex
from mobilemoe.data.evalsets import eval_passages, eval_set, load_eval_set
from mobilemoe.data.hashing import words_of

SETS = ["arc_easy", "boolq", "gsm8k", "lambada", "nq_open", "winogrande"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = EvalNgramIndex.build(SETS, ngram=13, min_words=8)
    path = tmp_path_factory.mktemp("evalgrams") / "evalgrams.npz"
    idx.save(path)
    return EvalNgramIndex.load(path)  # what the clean stage reads


@pytest.fixture(scope="module")
def clean_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics) if len(topics[k]) > 2000][:40]


def _planted(rng: random.Random) -> list[str]:
    """Eval passages as a model would see them, each >= 8 words, from every set."""
    out = []
    for name in SETS:
        passages = [p for p in dict.fromkeys(eval_passages(name)) if len(words_of(p)) >= 8]
        out += rng.sample(passages, 5)
    return out


def test_index_roundtrip_and_sizes(index):
    assert index.ngram == 13 and index.min_words == 8 and index.eval_sets == SETS
    assert len(index.tables[13]) > 100_000
    assert all(np.all(t[1:] > t[:-1]) for t in index.tables.values())  # sorted, unique


def test_every_planted_passage_is_found(index, clean_text):
    rng = random.Random(0)
    planted = _planted(rng)
    docs = []
    for i, p in enumerate(planted):
        host = clean_text[i % len(clean_text)]
        cut = rng.randrange(len(host))
        # formatting must not hide it: case and punctuation change, spacing changes
        variant = p.upper().replace(",", " ;") if i % 2 else p
        docs.append(host[:cut] + "\n" + variant + "\n" + host[cut:])
    assert index.contaminated(docs).all()
    assert not index.contaminated(clean_text).any()  # the real text itself is clean


def test_short_answers_are_not_contamination(index):
    row = load_eval_set("gsm8k")[0]
    text = (
        "In this essay the result was " + row["short_answer"] + " and nothing else of the "
        "benchmark appears, only ordinary prose about arithmetic in daily life."
    )
    assert not index.contaminated([text]).any()
    # an 8..12-word question matches as a whole
    q = next(r["question"] for r in load_eval_set("nq_open") if 8 <= len(words_of(r["question"])) < 13)
    assert index.contaminated([f"Trivia night. {q}? Nobody knew."]).all()


def test_clean_stage_drops_planted_documents_and_counts_them(index, clean_text):
    rng = random.Random(1)
    planted = _planted(rng)[:12]
    records = [
        {"id": f"clean:{i}", "text": t, "source": "cpython", "licence": "PSF-2.0"}
        for i, t in enumerate(clean_text[:20])
    ]
    for i, p in enumerate(planted):
        records.append(
            {
                "id": f"dirty:{i}",
                "text": clean_text[20 + i][:1500] + "\n\n" + p,
                "source": "web",
                "licence": "x",
            }
        )
    cfg = DataConfig()
    cfg.clean.chunk_chars = 100_000  # keep documents whole for this count
    docs, stats = clean_pretrain(records, cfg, index)
    kept = {d["id"] for d in docs}
    assert not any(k.startswith("dirty") for k in kept)
    assert stats["filters"]["decontam"]["dropped"] == len(planted)
    out_text = "\n".join(d["text"] for d in docs)
    for p in planted:
        assert p not in out_text
    assert eval_set("gsm8k").hf_path == "openai/gsm8k"


def test_headline_counts_dropped_pretrain_documents_and_sft_pairs(index, clean_text, tmp_path):
    """``stats.json``'s ``decontam_dropped`` is every text decontamination dropped, both splits."""
    from mobilemoe.data.curation import clean_sft
    from mobilemoe.data.io import write_json
    from mobilemoe.data.paths import data_paths
    from mobilemoe.data.stages import summarize

    planted = _planted(random.Random(2))
    records = [
        {
            "id": f"doc:{i}",
            "text": clean_text[i][:1500] + ("\n\n" + planted[i] if i < 2 else ""),
            "source": "cpython",
            "licence": "PSF-2.0",
        }
        for i in range(6)
    ]
    pairs = [
        {
            "id": f"pair:{i}",
            "prompt": f"Question {i}: what comes next?",
            "response": planted[10 + i] if i < 3 else f"An ordinary answer number {i}.",
            "source": "chat",
            "licence": "x",
        }
        for i in range(8)
    ]
    cfg = DataConfig()
    cfg.clean.chunk_chars = 100_000
    _, pre = clean_pretrain(records, cfg, index)
    kept, sft = clean_sft(pairs, cfg, index)
    assert len(kept) == 5 and sft["filters"]["decontam"]["dropped"] == 3
    paths = data_paths(load_preset("smoke"), tmp_path)
    write_json(paths.metrics("clean"), {"pretrain": pre, "sft": sft})
    h = summarize(paths, {"mixes": {}})["headline"]
    assert h["decontam_dropped_by_split"] == {"pretrain": 2, "sft": 3}
    assert h["decontam_dropped"] == 5
    # before the clean stage ran there is nothing to count
    paths.metrics("clean").unlink()
    empty = summarize(paths, {"mixes": {}})["headline"]
    assert empty["decontam_dropped"] is None

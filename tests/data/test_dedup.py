"""Near dedup finds planted ~5%-edited copies (recall >= 0.9) and leaves distinct documents
alone (false positives <= 1%); exact dedup ignores case, punctuation and spacing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mobilemoe.data.dedup import MinHashLSH, exact_duplicates
from mobilemoe.data.hashing import words_of


@pytest.fixture(scope="module")
def topic_words() -> list[str]:
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics)).split()


def _edit(text: str, frac: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(frac * len(words)))):
        words[i] = rng.choice(vocab)  # substitute ~5% of the words
    return " ".join(words)


def _shingles(text: str, k: int = 5) -> set:
    w = words_of(text)
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def test_recall_and_false_positives_on_planted_near_duplicates(topic_words):
    rng = random.Random(0)
    vocab = sorted(set(topic_words))
    # distinct documents: words drawn with their real frequencies (share ~no 5-grams)
    distinct = [" ".join(rng.choice(topic_words) for _ in range(rng.randint(60, 400))) for _ in range(2000)]
    planted = [_edit(d, 0.05, vocab, rng) for d in distinct[:200]]
    dup = MinHashLSH(num_perm=128, bands=32, shingle_words=5, threshold=0.5).duplicates(distinct + planted)
    recall = dup[2000:].mean()
    false_pos = dup[:2000].mean()
    assert recall >= 0.9, recall
    assert false_pos <= 0.01, false_pos
    assert not dup[0]  # the original (earlier) copy is the one kept


def test_real_text_windows(topic_words):
    """On real text (help() topics in 150-word windows) planted copies are found, and every
    original the LSH flags really overlaps an earlier window (the topics repeat sections)."""
    rng = random.Random(1)
    docs = [" ".join(topic_words[i : i + 150]) for i in range(0, len(topic_words) - 150, 150)]
    docs = [d for d, x in zip(docs, exact_duplicates(docs)) if not x]
    vocab = sorted(set(topic_words))
    planted = [_edit(d, 0.05, vocab, rng) for d in docs[:100]]
    dup = MinHashLSH().duplicates(docs + planted)
    assert dup[len(docs) :].mean() >= 0.9
    sh = [_shingles(d) for d in docs]
    for i in np.flatnonzero(dup[: len(docs)]):
        assert max(_jaccard(sh[i], sh[j]) for j in range(i)) >= 0.3, i


def test_signature_estimates_jaccard(topic_words):
    rng = random.Random(2)
    a = " ".join(topic_words[:400])
    b = _edit(a, 0.1, sorted(set(topic_words)), rng)
    lsh = MinHashLSH(num_perm=256, bands=64)
    sig = lsh.signatures([a, b])
    true = _jaccard(_shingles(a), _shingles(b))
    assert abs(lsh.similarity(sig, 0, 1) - true) < 0.1


def test_short_and_empty_texts():
    lsh = MinHashLSH()
    dup = lsh.duplicates(["one two", "one two", "three four five", "", ""])
    assert dup.tolist() == [False, True, False, False, True]


def test_exact_duplicates_ignore_case_punctuation_spacing():
    texts = ["Hello, world! This is text.", "hello world   this is TEXT", "Hello world, this is other text."]
    assert exact_duplicates(texts).tolist() == [False, True, False]

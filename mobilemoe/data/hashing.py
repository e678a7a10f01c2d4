"""Stable word and word-n-gram hashes in numpy (shared by near-dedup and decontamination).

Words are the lower-cased letter/digit runs of :func:`words_of`; each
gets a 64-bit hash (blake2b, the same in every process, unlike ``hash()``), and an n-gram's
hash is the polynomial ``sum_j h(w_{i+j}) * P^(n-1-j)`` modulo 2^64, computed for every
position at once with uint64 wraparound. ``ngram_hashes`` builds lengths incrementally,
so all of 8..13 cost one pass.
"""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)

_P = np.uint64(0x100000001B3)  # the FNV-64 prime: odd, so the polynomial mixes all bits


def words_of(text: str) -> list[str]:
    """Lower-cased words: runs of letters/digits, with an inner apostrophe (don't)."""
    return _WORD.findall(text.lower())


class WordHasher:
    """Maps words to stable uint64 hashes, caching each distinct word."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self._cache
        for w in set(words).difference(cache):
            cache[w] = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
        return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def text(self, text: str) -> np.ndarray:
        return self(words_of(text))

    def texts(self, texts: list[str]) -> list[np.ndarray]:
        """Word hashes of many texts with one hashing pass (much faster than one by one)."""
        words = [words_of(t) for t in texts]
        flat = self(list(itertools.chain.from_iterable(words)))
        bounds = np.cumsum([len(w) for w in words])[:-1]
        return np.split(flat, bounds) if texts else []


def ngram_hashes(word_h: np.ndarray, lengths: list[int]) -> dict[int, np.ndarray]:
    """{n: hashes of every n-gram of ``word_h``} for each n in ``lengths`` (empty if too short)."""
    out: dict[int, np.ndarray] = {}
    if not lengths:
        return out
    top = max(lengths)
    with np.errstate(over="ignore"):
        acc = word_h.copy()  # n = 1
        for n in range(1, top + 1):
            if n > 1:
                m = len(word_h) - n + 1
                if m <= 0:
                    acc = acc[:0]
                else:
                    acc = acc[:m] * _P + word_h[n - 1 :]
            if n in lengths:
                out[n] = acc.copy()
    return out


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` for uint64 by sort + neighbour compare (several times faster here)."""
    a = np.sort(a.astype(np.uint64, copy=False))
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]

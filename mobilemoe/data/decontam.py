"""Decontamination: find training texts that share a long word n-gram with an evaluation set.

    index = EvalNgramIndex.build(list_eval_sets(), ngram=13, min_words=8)   # or .load(path)
    index.save("data/evalgrams.npz")
    hits = index.contaminated(["some training text", ...])   # bool per text

Every evaluation passage (``evalsets.eval_passages``: questions, contexts, choices, answers)
contributes all its word 13-grams; a passage shorter than 13 words but with at least
``min_words`` words contributes itself whole (GPT-3's rule, with a floor: a five-word
answer such as "in the United States" is too generic to call contamination). A training
text is contaminated if it contains any of these n-grams. Words are lower-cased and
punctuation is ignored, so formatting differences do not hide an overlap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .hashing import WordHasher, ngram_hashes, sorted_unique

_BATCH_CHARS = 4_000_000  # ~700k words per hashing batch (~100 MB of temporaries)


class EvalNgramIndex:
    def __init__(
        self,
        tables: dict[int, np.ndarray],
        ngram: int,
        min_words: int,
        eval_sets: list[str],
        passages: int = 0,
    ):
        # sorted and unique (np.unique), which the lookup's searchsorted needs
        self.tables = {
            n: t if _is_sorted_unique(t) else sorted_unique(t) for n, t in tables.items() if len(t)
        }
        self.ngram, self.min_words = ngram, min_words
        self.eval_sets = list(eval_sets)
        self.passages = passages
        self._hasher = WordHasher()

    @classmethod
    def build(cls, eval_sets: Iterable[str], ngram: int = 13, min_words: int = 8) -> "EvalNgramIndex":
        from .evalsets import eval_passages

        names = list(eval_sets)
        seen: set[str] = set()
        hasher = WordHasher()
        lengths = list(range(min_words, ngram + 1))
        parts: dict[int, list[np.ndarray]] = {n: [] for n in lengths}
        batch: list[str] = []
        batch_chars = 0

        def flush() -> None:
            for n, t in _grams_within(hasher.texts(batch), lengths, whole_below=ngram).items():
                parts[n].append(sorted_unique(t))
            batch.clear()

        for name in names:  # in batches: memory stays bounded by the batch, not all sets
            for text in eval_passages(name):
                if text in seen:
                    continue  # CoQA stories, HellaSwag contexts repeat across rows
                seen.add(text)
                batch.append(text)
                batch_chars += len(text)
                if batch_chars > _BATCH_CHARS:
                    flush()
                    batch_chars = 0
        flush()
        tables = {
            n: sorted_unique(np.concatenate(p)) if p else np.zeros(0, np.uint64) for n, p in parts.items()
        }
        return cls(tables, ngram, min_words, names, passages=len(seen))

    def save(self, path: str | os.PathLike) -> None:
        from .io import atomic_open

        with atomic_open(path, "wb") as f:
            arrays: dict[str, Any] = {f"n{n}": t for n, t in self.tables.items()}
            np.savez(
                f,
                ngram=self.ngram,
                min_words=self.min_words,
                passages=self.passages,
                eval_sets=np.array(self.eval_sets, dtype=str),
                **arrays,
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvalNgramIndex":
        with np.load(Path(path)) as z:
            tables = {int(k[1:]): z[k] for k in z.files if k.startswith("n") and k[1:].isdigit()}
            return cls(
                tables,
                int(z["ngram"]),
                int(z["min_words"]),
                [str(s) for s in z["eval_sets"]],
                int(z["passages"]),
            )

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def contaminated(self, texts: list[str]) -> np.ndarray:
        """A bool per text: does it contain any evaluation n-gram?"""
        out = np.zeros(len(texts), dtype=bool)
        if not self.tables or not texts:
            return out
        hashes = self._hasher.texts(texts)
        for n, (grams, owner) in _all_grams(hashes, sorted(self.tables)).items():
            table = self.tables[n]
            pos = np.searchsorted(table, grams)
            pos[pos == len(table)] = 0
            out[owner[table[pos] == grams]] = True
        return out


def _is_sorted_unique(a: np.ndarray) -> bool:
    return a.dtype == np.uint64 and (len(a) < 2 or bool(np.all(a[1:] > a[:-1])))


def _all_grams(hashes: list[np.ndarray], lengths: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{n: (hashes of every n-gram inside one sequence, index of that sequence)} in one
    vectorised pass over the concatenation (n-grams spanning two sequences are dropped)."""
    sizes = np.array([len(h) for h in hashes], dtype=np.int64)
    allw = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    owner_of = np.repeat(np.arange(len(hashes)), sizes)
    ends = np.cumsum(sizes)
    left = ends[owner_of] - np.arange(len(allw))  # words from each position to its sequence's end
    out = {}
    for n, g in ngram_hashes(allw, lengths).items():
        inside = left[: len(g)] >= n
        out[n] = (g[inside], owner_of[: len(g)][inside])
    return out


def _grams_within(hashes: list[np.ndarray], lengths: list[int], whole_below: int) -> dict[int, np.ndarray]:
    """The index tables: every ``whole_below``-gram of each sequence, and each shorter
    sequence (of a length in ``lengths``) whole."""
    sizes = np.array([len(h) for h in hashes], dtype=np.int64)
    tables = {}
    for n, (g, owner) in _all_grams(hashes, lengths).items():
        if n == whole_below:
            tables[n] = g
        else:  # a short passage whole: its only n-gram of its own length, starting at 0
            first = np.flatnonzero(sizes[owner] == n)
            tables[n] = g[first]
    return tables

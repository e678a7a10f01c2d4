"""Exact and near-duplicate detection (MinHash + LSH, in numpy).

    from mobilemoe.data.dedup import exact_duplicates, MinHashLSH
    dup = exact_duplicates(texts)                      # bool per text: same words as an earlier one
    lsh = MinHashLSH(num_perm=128, bands=32, shingle_words=5, threshold=0.5)
    dup = lsh.duplicates(texts)                        # bool per text: near-copy of an earlier one

Near dedup: each text's shingles are its word 5-grams (hashed as in ``hashing.py``); a
signature holds, for each of ``num_perm`` multiply-shift hash functions, the minimum over
the shingles. The signature is cut into ``bands`` bands; texts that agree on all rows of any
band become candidates, and a candidate is a duplicate when the share of equal signature
entries (an estimate of the shingle-set Jaccard similarity) reaches ``threshold``. Texts
linked this way form clusters (union-find); the earliest text of each cluster is kept.

Why these numbers (our choices; the paper is silent): a copy with ~5% of its words changed
keeps ~0.95^5 = 77% of its 5-gram shingles, Jaccard ~0.63; with 32 bands of 4 rows a pair
at J = 0.63 becomes a candidate with probability 1 - (1 - 0.63^4)^32 > 0.99, and the
estimate (s.d. ~0.04 at 128 permutations) clears 0.5. Unrelated texts share almost no
5-grams (J ~ 0), so false candidates are rare and are rejected by the estimate.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .hashing import WordHasher, ngram_hashes, words_of

_MIX = np.uint64(0x9E3779B97F4A7C15)


def exact_key(text: str) -> bytes:
    """Same words in the same order (case, punctuation and spacing ignored)."""
    return hashlib.blake2b(" ".join(words_of(text)).encode("utf-8"), digest_size=16).digest()


def exact_duplicates(texts: list[str]) -> np.ndarray:
    seen: set[bytes] = set()
    out = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        k = exact_key(t)
        out[i] = k in seen
        seen.add(k)
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index stays root: the earliest text is the one kept
            self.parent[max(ra, rb)] = min(ra, rb)


class MinHashLSH:
    def __init__(
        self,
        num_perm: int = 128,
        bands: int = 32,
        shingle_words: int = 5,
        threshold: float = 0.5,
        seed: int = 0,
        batch_shingles: int = 1 << 20,
    ):
        if num_perm % bands:
            raise ValueError("bands must divide num_perm")
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.k, self.threshold = shingle_words, threshold
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: h(x) = (a*x + b) >> 32 over uint64 with odd a
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.batch_shingles = batch_shingles
        self._hasher = WordHasher()

    def _shingles(self, word_h: np.ndarray) -> np.ndarray:
        if len(word_h) >= self.k:
            sh = ngram_hashes(word_h, [self.k])[self.k]
        elif len(word_h):  # shorter than one shingle: the whole text is its one shingle
            sh = ngram_hashes(word_h, [len(word_h)])[len(word_h)]
        else:
            sh = np.zeros(1, np.uint64)
        with np.errstate(over="ignore"):  # finalise: spread the polynomial's low bits
            sh = sh * _MIX
            sh ^= sh >> np.uint64(29)
        return np.unique(sh)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        shingles = [self._shingles(h) for h in self._hasher.texts(texts)]
        sig = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        start = 0
        while start < len(texts):  # batches bound the (shingles x 1) temporaries
            end, total = start, 0
            while end < len(texts) and (end == start or total + len(shingles[end]) <= self.batch_shingles):
                total += len(shingles[end])
                end += 1
            flat = np.concatenate(shingles[start:end])
            offsets = np.concatenate([[0], np.cumsum([len(s) for s in shingles[start:end]])[:-1]])
            with np.errstate(over="ignore"):
                for p in range(self.num_perm):
                    hv = ((flat * self.a[p] + self.b[p]) >> np.uint64(32)).astype(np.uint32)
                    sig[start:end, p] = np.minimum.reduceat(hv, offsets)
            start = end
        return sig

    def duplicates(self, texts: list[str], sig: np.ndarray | None = None) -> np.ndarray:
        """A bool per text: it is a near-duplicate of an earlier text (which is kept)."""
        n = len(texts)
        if sig is None:
            sig = self.signatures(texts)
        uf = _UnionFind(n)
        for band in range(self.bands):
            cols = np.ascontiguousarray(sig[:, band * self.rows : (band + 1) * self.rows])
            keys = cols.view(np.dtype((np.void, cols.dtype.itemsize * self.rows))).ravel()
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            same = np.flatnonzero(sk[1:] == sk[:-1])  # neighbours in a shared bucket
            for j in same:
                a, b = int(order[j]), int(order[j + 1])
                first = int(order[np.searchsorted(sk, sk[j], side="left")])
                for x, y in ((a, b), (first, b)):  # compare with the neighbour and the bucket's first
                    if x != y and uf.find(x) != uf.find(y) and self.similarity(sig, x, y) >= self.threshold:
                        uf.union(x, y)
        roots = np.array([uf.find(i) for i in range(n)])
        return roots != np.arange(n)

    @staticmethod
    def similarity(sig: np.ndarray, i: int, j: int) -> float:
        return float(np.mean(sig[i] == sig[j]))

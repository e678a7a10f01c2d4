"""Packed token shards: the contract between curation and training.

A mix folder (e.g. ``data/shards/pretrain``) holds, per split (``train``, ``val``):

    {split}.bin        token ids, packed documents, uint16 (vocab <= 65,536) or uint32
    {split}.mask.bin   optional uint8, 1 where the token is a *target* that carries loss
                       (SFT: response tokens only); absent = every token carries loss
    meta.json          written last: dtype, vocab size, per-split token counts and sha256,
                       source mix, tokenizer sha256

Documents are packed back to back, each as ``<bos> ... <eos>``. Training takes random
windows (nanoGPT style): inputs ``t[i:i+L]``, targets ``t[i+1:i+L+1]``, loss mask
``m[i+1:i+L+1]``. Files are written to a temporary name and renamed, and ``meta.json``
comes last, so a half-written mix is never read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import UserError
from ..io import atomic_open, write_text_atomic

META = "meta.json"
FORMAT = 1


class ShardError(UserError):
    pass


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, arrays: Iterable[np.ndarray], dtype: np.dtype) -> tuple[int, str]:
    n = 0
    h = hashlib.sha256()
    with atomic_open(path, "wb") as f:
        for a in arrays:
            b = np.ascontiguousarray(a, dtype=dtype).tobytes()
            f.write(b)
            h.update(b)
            n += len(b) // dtype.itemsize
    return n, h.hexdigest()


class ShardWriter:
    """Write one mix folder: ``add_split(...)`` per split, then ``close(meta)``."""

    def __init__(self, folder: str | os.PathLike, vocab_size: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / META).unlink(missing_ok=True)  # invalid until close() writes it again
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.splits: dict[str, dict] = {}

    def add_split(
        self,
        split: str,
        docs: Iterable[np.ndarray],
        masks: Optional[Iterable[np.ndarray]] = None,
        documents: Optional[int] = None,
    ) -> dict:
        docs = list(docs)
        for d in docs:
            if len(d) and (int(np.max(d)) >= self.vocab_size or int(np.min(d)) < 0):
                raise ShardError(
                    f"{self.folder}/{split}: token id out of range for vocab_size={self.vocab_size}"
                )
        n, sha = _write_atomic(self.folder / f"{split}.bin", docs, self.dtype)
        info = {"tokens": n, "sha256": sha, "documents": documents if documents is not None else len(docs)}
        mask_path = self.folder / f"{split}.mask.bin"
        if masks is not None:
            masks = list(masks)
            m, msha = _write_atomic(mask_path, masks, np.dtype(np.uint8))
            if m != n:
                raise ShardError(f"{self.folder}/{split}: mask has {m} entries for {n} tokens")
            info["mask_sha256"] = msha
            info["loss_tokens"] = int(sum(int(np.sum(x)) for x in masks))
        else:
            mask_path.unlink(missing_ok=True)
        self.splits[split] = info
        return info

    def close(self, **meta) -> dict:
        out = {
            "format": FORMAT,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "splits": self.splits,
            **meta,
        }
        write_text_atomic(self.folder / META, json.dumps(out, indent=1, sort_keys=True))
        return out


@dataclass
class ShardSplit:
    name: str
    tokens: np.ndarray  # memmap
    mask: Optional[np.ndarray]  # memmap of uint8 or None

    def __len__(self) -> int:
        return len(self.tokens)


class TokenShards:
    """Read a mix folder (memory-mapped)."""

    def __init__(self, folder: str | os.PathLike, verify: bool = False):
        self.folder = Path(folder)
        mpath = self.folder / META
        if not mpath.is_file():
            raise ShardError(
                f"{self.folder}: no {META}; the shards are missing or were not "
                "finished (run `dvc repro` to build them)"
            )
        try:
            self.meta = json.loads(mpath.read_text())
            self.dtype = np.dtype(self.meta["dtype"])
            self.vocab_size = int(self.meta["vocab_size"])
            splits = self.meta["splits"]
        except (ValueError, KeyError, TypeError) as e:
            raise ShardError(f"{mpath}: unreadable shard metadata ({e})") from None
        self._splits: dict[str, ShardSplit] = {}
        for name, info in splits.items():
            path = self.folder / f"{name}.bin"
            if not path.is_file():
                raise ShardError(f"{path}: listed in {META} but missing")
            expect = info["tokens"] * self.dtype.itemsize
            if path.stat().st_size != expect:
                raise ShardError(
                    f"{path}: {path.stat().st_size} bytes, {META} says {expect} "
                    "(truncated or rewritten; rebuild with `dvc repro`)"
                )
            if verify and _sha256(path) != info["sha256"]:
                raise ShardError(f"{path}: sha256 does not match {META}")
            tokens = (
                np.memmap(path, dtype=self.dtype, mode="r") if info["tokens"] else np.zeros(0, self.dtype)
            )
            mask = None
            if "mask_sha256" in info:
                mpath_ = self.folder / f"{name}.mask.bin"
                if not mpath_.is_file() or mpath_.stat().st_size != info["tokens"]:
                    raise ShardError(f"{mpath_}: missing or wrong size for {info['tokens']} tokens")
                mask = (
                    np.memmap(mpath_, dtype=np.uint8, mode="r") if info["tokens"] else np.zeros(0, np.uint8)
                )
            self._splits[name] = ShardSplit(name, tokens, mask)

    def split(self, name: str) -> ShardSplit:
        if name not in self._splits:
            raise ShardError(f"{self.folder}: no split {name!r} (have {sorted(self._splits)})")
        return self._splits[name]

    @property
    def train(self) -> ShardSplit:
        return self.split("train")

    @property
    def val(self) -> ShardSplit:
        return self.split("val")

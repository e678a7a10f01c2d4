"""The shards stage: cleaned text -> packed token shards of the three training mixes.

    from mobilemoe.data.mixes import build_mixes
    summary = build_mixes(docs, pairs, tok, tokenizer_sha256, cfg.data, paths)

- ``pretrain``: every cleaned document once, in a seeded shuffled order.
- ``midtrain``: the higher-quality part (top ``midtrain.quality_fraction`` by
  ``clean.quality_score``), each document repeated by its source's weight
  (``midtrain.source_weights``; fractional weights repeat a seeded share), plus an optional
  share of SFT pairs as plain chat text (``midtrain.sft_fraction``).
- ``sft``: the chat-formatted pairs with a loss mask on the response tokens, the
  end-of-turn token and the final EOS only (``tokenizer.encode_chat``).

Train/val: a document (a chunk of a long source document) goes to ``val`` when the hash of
its id falls below ``val_fraction``: the split is the same for every mix (midtrain's val is
pretrain's val filtered the same way) and does not move when other documents are added or
removed. Splitting by chunk, not by source document, keeps the split near ``val_fraction``
when one source is a single big file (the Jargon File is one record of ~400 chunks);
neighbouring chunks share no text (exact and near dedup ran before).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

import numpy as np

from ..config.data import DataConfig
from ..tokens import format_chat
from .shards import ShardWriter
from .tokenizer import encode_chat


def is_val(doc_id: str, val_fraction: float, seed: int) -> bool:
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


def _encode_docs(tok, texts: list[str]) -> list[np.ndarray]:
    from ..tokens import BOS_ID, EOS_ID

    out = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out.append(np.array([BOS_ID, *enc.ids, EOS_ID], dtype=np.int64))
    return out


def _write_mix(
    folder, vocab_size: int, splits: dict[str, list[dict]], tok, meta: dict, masks: bool = False
) -> dict:
    writer = ShardWriter(folder, vocab_size)
    mix: dict[str, dict] = {}
    for split, items in splits.items():
        if masks:
            encoded = [encode_chat(tok, p["prompt"], p["response"]) for p in items]
            ids = [np.array(e[0], dtype=np.int64) for e in encoded]
            msk = [np.array(e[1], dtype=np.uint8) for e in encoded]
        else:
            ids = _encode_docs(tok, [d["text"] for d in items])
            msk = None
        per_source: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "tokens": 0})
        for item, a in zip(items, ids):
            per_source[item["source"]]["docs"] += 1
            per_source[item["source"]]["tokens"] += len(a)
        writer.add_split(split, ids, msk, documents=len(items))
        mix[split] = dict(per_source)
    licences = sorted({i["licence"] for items in splits.values() for i in items})
    return writer.close(source_mix=mix, licences=licences, **meta)


def _weighted(docs: list[dict], weights: dict[str, float], rng: random.Random) -> list[dict]:
    out = []
    for d in docs:
        w = weights.get(d["source"], 1.0)
        reps = int(w) + (1 if rng.random() < w - int(w) else 0)
        out.extend([d] * reps)
    return out


def select_midtrain(docs: list[dict], fraction: float) -> list[dict]:
    """The top ``fraction`` of ``docs`` by quality (ties broken by id: deterministic)."""
    ranked = sorted(docs, key=lambda d: (-d["quality"], d["id"]))
    return ranked[: max(1, round(fraction * len(ranked)))] if ranked else []


def build_mixes(
    docs: list[dict], pairs: list[dict], tok, tokenizer_sha256: str, cfg: DataConfig, paths
) -> dict:
    vocab = tok.get_vocab_size()
    rng = random.Random(cfg.seed)
    split: dict[str, list[dict]] = {"train": [], "val": []}
    for d in docs:
        split["val" if is_val(d["id"], cfg.val_fraction, cfg.seed) else "train"].append(d)
    for s in split.values():
        rng.shuffle(s)
    sft: dict[str, list[dict]] = {"train": [], "val": []}
    for p in pairs:
        sft["val" if is_val(p["id"], cfg.val_fraction, cfg.seed) else "train"].append(p)
    for s in sft.values():
        rng.shuffle(s)
    common = {"tokenizer_sha256": tokenizer_sha256, "seed": cfg.seed, "val_fraction": cfg.val_fraction}

    summary = {}
    summary["pretrain"] = _write_mix(paths.pretrain, vocab, split, tok, {**common, "mix": "pretrain"})

    m = cfg.midtrain
    mid = {}
    for name, items in split.items():
        chosen = _weighted(select_midtrain(items, m.quality_fraction), m.source_weights, rng)
        if m.sft_fraction > 0 and sft[name]:
            # n_sft / (n_docs + n_sft) = sft_fraction
            n = min(len(sft[name]), round(m.sft_fraction * len(chosen) / (1 - m.sft_fraction)))
            for p in rng.sample(sft[name], n):
                prompt, completion = format_chat(p["prompt"], p["response"])
                chosen.append({"text": prompt + completion, "source": p["source"], "licence": p["licence"]})
        rng.shuffle(chosen)
        mid[name] = chosen
    summary["midtrain"] = _write_mix(
        paths.midtrain,
        vocab,
        mid,
        tok,
        {
            **common,
            "mix": "midtrain",
            "quality_fraction": m.quality_fraction,
            "source_weights": dict(m.source_weights),
            "sft_fraction": m.sft_fraction,
        },
    )

    summary["sft"] = _write_mix(paths.sft, vocab, sft, tok, {**common, "mix": "sft"}, masks=True)
    return summary

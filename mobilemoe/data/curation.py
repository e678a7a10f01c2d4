"""The clean stage: raw records -> normalised, filtered, deduplicated, decontaminated text.

    from mobilemoe.data.curation import clean_pretrain, clean_sft
    docs, stats = clean_pretrain(raw_records, cfg.data, index)   # index: EvalNgramIndex | None
    pairs, stats = clean_sft(raw_pairs, cfg.data, index)

Pre-training order: normalise -> chunk at paragraphs -> quality filters (clean.py; the first
failing rule is counted) -> exact dedup -> near dedup -> decontamination. SFT pairs:
normalise -> empty/length -> exact dedup -> decontamination. Each step's kept/dropped
documents and bytes go to the stats (``FilterStats``), also per source.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Iterable

from ..config.data import DataConfig
from .clean import check_quality, chunk, normalize, quality_score
from .dedup import MinHashLSH, exact_duplicates, exact_key
from .io import FilterStats, nbytes

QUALITY_FILTERS = (
    "empty",
    "min_chars",
    "max_line_chars",
    "min_words",
    "alpha_fraction",
    "non_latin",
    "stopwords",
    "dup_lines",
    "top_bigram",
    "dup_5grams",
)


def _by_source(docs: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "bytes": 0})
    for d in docs:
        out[d["source"]]["docs"] += 1
        out[d["source"]]["bytes"] += d.get("bytes", 0)
    return dict(out)


def _apply(docs: list[dict], drop, name: str, stats: FilterStats) -> list[dict]:
    kept = []
    for d, dropped in zip(docs, drop):
        (stats.drop if dropped else stats.keep)(name, d["bytes"])
        if not dropped:
            kept.append(d)
    return kept


def clean_pretrain(records: Iterable[dict], cfg: DataConfig, index=None) -> tuple[list[dict], dict]:
    c = cfg.clean
    stats = FilterStats()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    in_docs = in_bytes = 0
    docs: list[dict] = []
    for rec in records:
        raw_bytes = nbytes(rec["text"])
        in_docs += 1
        in_bytes += raw_bytes
        text = normalize(rec["text"], c.unicode_form)
        stats.keep("normalize", nbytes(text)) if text else stats.drop("normalize", raw_bytes)
        if not text:
            continue
        pieces = chunk(text, c.chunk_chars)
        for k, piece in enumerate(pieces):
            b = nbytes(piece)
            reason = check_quality(piece, c, rec.get("min_chars"))
            for name in QUALITY_FILTERS:
                if name == reason:
                    stats.drop(name, b)
                    break
                stats.keep(name, b)
            if reason is None:
                docs.append(
                    {
                        "id": rec["id"] if len(pieces) == 1 else f"{rec['id']}#{k}",
                        "doc": rec["id"],
                        "text": piece,
                        "source": rec["source"],
                        "licence": rec["licence"],
                        "bytes": b,
                    }
                )
    timings["normalize_filter_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    if cfg.dedup.exact:
        docs = _apply(docs, exact_duplicates([d["text"] for d in docs]), "exact_dup", stats)
    timings["exact_dedup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if cfg.dedup.near and docs:
        d = cfg.dedup
        lsh = MinHashLSH(d.num_perm, d.bands, d.shingle_words, d.threshold, d.seed)
        docs = _apply(docs, lsh.duplicates([x["text"] for x in docs]), "near_dup", stats)
    timings["near_dedup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if index is not None and docs:
        docs = _apply(docs, index.contaminated([x["text"] for x in docs]), "decontam", stats)
    timings["decontam_s"] = time.perf_counter() - t
    for x in docs:
        x["quality"] = quality_score(x["text"])
    out_bytes = sum(x["bytes"] for x in docs)
    summary = {
        "input": {"docs": in_docs, "bytes": in_bytes},
        "output": {"docs": len(docs), "bytes": out_bytes},
        "filters": stats.to_dict(),
        "filter_order": list(stats.filters),
        "by_source": _by_source(docs),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return docs, summary


def clean_sft(records: Iterable[dict], cfg: DataConfig, index=None) -> tuple[list[dict], dict]:
    c = cfg.clean
    stats = FilterStats()
    pairs: list[dict] = []
    in_docs = in_bytes = 0
    for rec in records:
        in_docs += 1
        b = nbytes(rec["prompt"]) + nbytes(rec["response"])
        in_bytes += b
        prompt = normalize(rec["prompt"], c.unicode_form)
        response = normalize(rec["response"], c.unicode_form)
        if not prompt or not response:
            stats.drop("empty", b)
            continue
        stats.keep("empty", b)
        if len(prompt) > c.sft_max_chars or len(response) > c.sft_max_chars:
            stats.drop("sft_max_chars", b)
            continue
        stats.keep("sft_max_chars", b)
        pairs.append(
            {
                "id": rec["id"],
                "prompt": prompt,
                "response": response,
                "source": rec["source"],
                "licence": rec["licence"],
                "bytes": nbytes(prompt) + nbytes(response),
            }
        )
    if cfg.dedup.exact:
        seen: set[tuple[bytes, bytes]] = set()
        dup = []
        for p in pairs:
            key = (exact_key(p["prompt"]), exact_key(p["response"]))
            dup.append(key in seen)
            seen.add(key)
        pairs = _apply(pairs, dup, "exact_dup", stats)
    if index is not None and pairs:
        hits = index.contaminated([f"{p['prompt']}\n{p['response']}" for p in pairs])
        pairs = _apply(pairs, hits, "decontam", stats)
    summary = {
        "input": {"docs": in_docs, "bytes": in_bytes},
        "output": {"docs": len(pairs), "bytes": sum(p["bytes"] for p in pairs)},
        "filters": stats.to_dict(),
        "filter_order": list(stats.filters),
        "by_source": _by_source(pairs),
    }
    return pairs, summary

"""The DVC stage commands of ``dvc.yaml``: ``scripts/py -m mobilemoe.data.stages STAGE``.

    sources    data.sources, data.max_record_bytes         -> raw/{pretrain,sft}.jsonl
    evalgrams  data.decontam                                -> evalgrams.npz
    clean      data.clean, data.dedup, data.decontam.enabled -> clean/{pretrain,sft}.jsonl
    tokenizer  model.vocab_size, data.tokenizer             -> tokenizer.json
    shards     data.val_fraction, data.seed, data.midtrain  -> shards/{pretrain,midtrain,sft}/, stats.json

Each reads the project's ``params.yaml`` (the working directory is the project: DVC runs
stages there) and writes its metrics to ``{out_dir}/metrics/STAGE.json``; its wall-clock
times go to ``{out_dir}/timings/STAGE.json``, outside DVC's outputs (they differ on every
run, so in an output they would rewrite dvc.lock). Run one by hand with ``--root DIR`` to
use another project folder. A user error prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import unicodedata
from pathlib import Path

from ..errors import UserError
from .io import read_json, read_jsonl, write_json, write_jsonl
from .paths import DataPaths, data_paths


def _load(root: Path):
    from ..config import load_params

    params = load_params(root / "params.yaml")
    return params, data_paths(params, root)


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise UserError(f"{path}: missing; run the {stage} stage first (`dvc repro {stage}`)")
    return path


def _write_timings(paths: DataPaths, stage: str, timings: dict) -> None:
    """Wall-clock times go beside the metrics, not in them: they differ on every run, and a
    DVC output that differs rewrites dvc.lock (a fresh machine's checkout would be dirty)."""
    write_json(paths.timings(stage), {k: round(v, 3) for k, v in timings.items()})


def run_sources(params, paths: DataPaths) -> dict:
    from .sources import read_sources

    stats = read_sources(params.data, paths.project, paths.raw_pretrain, paths.raw_sft)
    write_json(paths.metrics("sources"), stats)
    return stats


def run_evalgrams(params, paths: DataPaths) -> dict:
    from .decontam import EvalNgramIndex
    from .evalsets import list_eval_sets

    d = params.data.decontam
    t = time.perf_counter()
    names = d.eval_sets or list_eval_sets()
    index = EvalNgramIndex.build(names, d.ngram, d.min_words)
    index.save(paths.evalgrams)
    stats = {
        "eval_sets": names,
        "passages": index.passages,
        "ngrams": index.size,
        "ngram": d.ngram,
        "min_words": d.min_words,
        "ngrams_by_length": {str(n): int(len(t)) for n, t in index.tables.items()},
    }
    write_json(paths.metrics("evalgrams"), stats)
    _write_timings(paths, "evalgrams", {"total_s": time.perf_counter() - t})
    return stats


def run_clean(params, paths: DataPaths) -> dict:
    from .curation import clean_pretrain, clean_sft
    from .decontam import EvalNgramIndex

    index = EvalNgramIndex.load(_need(paths.evalgrams, "evalgrams")) if params.data.decontam.enabled else None
    docs, pre = clean_pretrain(read_jsonl(_need(paths.raw_pretrain, "sources")), params.data, index)
    pairs, sft = clean_sft(read_jsonl(_need(paths.raw_sft, "sources")), params.data, index)
    _write_timings(paths, "clean", pre.pop("timings_s"))
    write_jsonl(paths.clean_pretrain, docs)
    write_jsonl(paths.clean_sft, pairs)
    stats = {
        "pretrain": pre,
        "sft": sft,
        "decontam_eval_sets": index.eval_sets if index is not None else [],
        # NFC and the letter/script filters read this table: another Python minor
        # release (another Unicode version) may clean the same text differently
        "unicode_version": unicodedata.unidata_version,
    }
    write_json(paths.metrics("clean"), stats)
    return stats


def _training_texts(paths: DataPaths, max_chars: int):
    from ..tokens import format_chat

    docs = (d["text"] for d in read_jsonl(paths.clean_pretrain))
    chats = ("".join(format_chat(p["prompt"], p["response"])) for p in read_jsonl(paths.clean_sft))
    total = 0
    for text in itertools.chain(docs, chats):
        if total >= max_chars:
            return
        total += len(text)
        yield text


def run_tokenizer(params, paths: DataPaths) -> dict:
    from .tokenizer import file_sha256, train_tokenizer

    _need(paths.clean_pretrain, "clean")
    t = time.perf_counter()
    texts = list(_training_texts(paths, params.data.tokenizer.max_train_chars))
    tok = train_tokenizer(texts, params.model.vocab_size, params.data.tokenizer.min_frequency)
    tmp = paths.tokenizer.with_name(f"{paths.tokenizer.name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp))  # Tokenizer.save writes in place: write beside, then rename
    os.replace(tmp, paths.tokenizer)
    sample = texts[:: max(1, len(texts) // 200)]
    n_bytes = sum(len(t.encode("utf-8")) for t in sample)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(sample, add_special_tokens=False))
    stats = {
        "vocab_size": tok.get_vocab_size(),
        "model_vocab_size": params.model.vocab_size,
        "train_texts": len(texts),
        "train_chars": sum(len(t) for t in texts),
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 3),
        "sha256": file_sha256(paths.tokenizer),
    }
    write_json(paths.metrics("tokenizer"), stats)
    _write_timings(paths, "tokenizer", {"total_s": time.perf_counter() - t})
    return stats


def run_shards(params, paths: DataPaths) -> dict:
    from .mixes import build_mixes
    from .tokenizer import file_sha256, load_tokenizer

    tok = load_tokenizer(_need(paths.tokenizer, "tokenizer"), params.model.vocab_size)
    docs = list(read_jsonl(_need(paths.clean_pretrain, "clean")))
    pairs = list(read_jsonl(_need(paths.clean_sft, "clean")))
    t = time.perf_counter()
    metas = build_mixes(docs, pairs, tok, file_sha256(paths.tokenizer), params.data, paths)
    mixes = {}
    for name, meta in metas.items():
        mixes[name] = {
            split: {k: info[k] for k in ("tokens", "documents", "loss_tokens") if k in info}
            for split, info in meta["splits"].items()
        }
    stats = {"mixes": mixes, "dtype": metas["pretrain"]["dtype"]}
    write_json(paths.metrics("shards"), stats)
    _write_timings(paths, "shards", {"total_s": time.perf_counter() - t})
    write_json(paths.stats, summarize(paths, stats))
    return stats


def summarize(paths: DataPaths, shards: dict) -> dict:
    """All stages' metrics in one document, with the headline numbers first."""
    stages = {}
    for stage in ("sources", "evalgrams", "clean", "tokenizer"):
        p = paths.metrics(stage)
        stages[stage] = read_json(p) if p.exists() else None
    stages["shards"] = shards
    clean = stages["clean"] or {}
    ev = stages["evalgrams"] or {}
    headline = {
        "pretrain_clean_bytes": clean.get("pretrain", {}).get("output", {}).get("bytes"),
        "pretrain_clean_docs": clean.get("pretrain", {}).get("output", {}).get("docs"),
        "sft_pairs": clean.get("sft", {}).get("output", {}).get("docs"),
        **decontam_dropped(clean),
        "eval_sets": len(ev.get("eval_sets", [])),
        "tokens": {
            mix: {s: v["tokens"] for s, v in splits.items()} for mix, splits in shards["mixes"].items()
        },
    }
    return {"headline": headline, **stages}


def decontam_dropped(clean: dict) -> dict:
    """Texts dropped by decontamination: the total (pretrain documents + SFT pairs) and per
    split; None where the clean stage has not run (decontamination off counts 0)."""
    by_split: dict[str, int | None] = {}
    for split in ("pretrain", "sft"):
        part = clean.get(split)
        by_split[split] = None if part is None else part["filters"].get("decontam", {}).get("dropped", 0)
    known = [n for n in by_split.values() if n is not None]
    return {"decontam_dropped": sum(known) if known else None, "decontam_dropped_by_split": by_split}


# The stages in dvc.yaml's order, each with the function that runs it.
STAGES = {
    "sources": run_sources,
    "evalgrams": run_evalgrams,
    "clean": run_clean,
    "tokenizer": run_tokenizer,
    "shards": run_shards,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobilemoe.data.stages", description=__doc__.split("\n")[0]
    )
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--root", default=".", help="project folder (default: the working directory)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per stage (docs/libraries.md#threads)
    try:
        params, paths = _load(Path(args.root).resolve())
        t = time.perf_counter()
        STAGES[args.stage](params, paths)
        print(f"{args.stage}: done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

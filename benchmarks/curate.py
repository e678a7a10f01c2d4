"""Curation throughput on one core, and the tiny default's whole curation wall time.

    .venv/bin/python benchmarks/curate.py [--params params.yaml] [--skip-full]

1. Reads the sources of the params file (default: the project's, = preset tiny) in this
   process, then times clean (normalise + quality filters) and dedup (exact + MinHash/LSH)
   over them: MB/s of raw input text, and each part's share.
2. Times decontamination (building the n-gram index of every evaluation set, and checking
   the cleaned text against it).
3. Runs the whole DVC pipeline (``mobilemoe.data.curate``) in a fresh temporary copy of
   the project: the wall time a user waits for ``dvc repro`` on a clean checkout.
   Target (issue 3): under 60 s for tiny on a 2-core laptop-class machine.

Prints a table and ends with one JSON line; writes benchmarks/results/curate.json (with the
machine and date). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core
os.environ.setdefault("OMP_NUM_THREADS", "1")

from stamp import write_result  # noqa: E402


def _copy_project(dest: Path, params: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mobilemoe", "scripts", "presets"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copy2(params, dest / "params.yaml")
    (dest / ".venv").symlink_to(ROOT / ".venv")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    from dvc.repo import Repo

    Repo.init(str(dest)).close()
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--skip-full", action="store_true", help="skip the whole-pipeline run")
    args = ap.parse_args()

    from mobilemoe.config import load_params
    from mobilemoe.data.curation import clean_pretrain
    from mobilemoe.data.decontam import EvalNgramIndex
    from mobilemoe.data.evalsets import list_eval_sets
    from mobilemoe.data.sources import SourceStats, iter_source

    params = load_params(args.params)
    cfg = params.data
    t = time.perf_counter()
    records = []
    for i, src in enumerate(cfg.source_configs()):
        if src.use == "pretrain":
            records += iter_source(src, f"data.sources[{i}]", ROOT, SourceStats(src), cfg.max_record_bytes)
    read_s = time.perf_counter() - t
    raw_mb = sum(len(r["text"].encode("utf-8")) for r in records) / 1e6

    t = time.perf_counter()
    docs, stats = clean_pretrain(records, cfg, index=None)
    clean_dedup_s = time.perf_counter() - t
    timings = stats["timings_s"]
    clean_mb = stats["output"]["bytes"] / 1e6

    t = time.perf_counter()
    index = EvalNgramIndex.build(
        cfg.decontam.eval_sets or list_eval_sets(), cfg.decontam.ngram, cfg.decontam.min_words
    )
    index_s = time.perf_counter() - t
    t = time.perf_counter()
    hits = int(index.contaminated([d["text"] for d in docs]).sum())
    check_s = time.perf_counter() - t

    result = {
        "params": str(args.params),
        "raw_mb": round(raw_mb, 3),
        "clean_mb": round(clean_mb, 3),
        "read_sources_s": round(read_s, 2),
        "clean_dedup_s": round(clean_dedup_s, 2),
        "clean_dedup_mb_per_s": round(raw_mb / clean_dedup_s, 2),
        "clean_mb_per_s": round(raw_mb / timings["normalize_filter_s"], 2),
        "exact_dedup_mb_per_s": round(raw_mb / max(timings["exact_dedup_s"], 1e-9), 1),
        "near_dedup_mb_per_s": round(raw_mb / max(timings["near_dedup_s"], 1e-9), 2),
        "evalgrams_build_s": round(index_s, 2),
        "evalgrams_ngrams": index.size,
        "decontam_check_mb_per_s": round(clean_mb / max(check_s, 1e-9), 2),
        "decontam_hits": hits,
    }
    print(f"sources: {raw_mb:.2f} MB raw pre-training text read in {read_s:.1f} s")
    print(
        f"clean + dedup: {clean_dedup_s:.2f} s = {result['clean_dedup_mb_per_s']} MB/s on one core "
        f"(clean {result['clean_mb_per_s']} MB/s, exact {result['exact_dedup_mb_per_s']} MB/s, "
        f"near {result['near_dedup_mb_per_s']} MB/s); kept {clean_mb:.2f} MB"
    )
    print(
        f"decontamination: index of {index.size:,} n-grams in {index_s:.1f} s; check "
        f"{result['decontam_check_mb_per_s']} MB/s; {hits} documents hit"
    )

    if not args.skip_full:
        from mobilemoe.data import curate

        with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
            root = _copy_project(Path(tmp), Path(args.params))
            t = time.perf_counter()
            out = curate(root)
            full_s = time.perf_counter() - t
            t = time.perf_counter()
            again = curate(root)
            noop_s = time.perf_counter() - t
        result.update(
            {
                "full_curation_s": round(full_s, 1),
                "noop_repro_s": round(noop_s, 2),
                "stages_run": out["stages_run"],
                "noop_stages_run": again["stages_run"],
                "full_under_60s": full_s < 60.0,
                "headline": out["stats"].get("headline"),
            }
        )
        print(
            f"whole curation (dvc repro, fresh copy): {full_s:.1f} s (target < 60 s); "
            f"a second repro: {noop_s:.2f} s, ran {again['stages_run'] or 'nothing'}"
        )
    write_result("curate", result)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

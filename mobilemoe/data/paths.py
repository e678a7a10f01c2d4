"""Where the curation stages put their outputs (one definition for dvc.yaml, stages, trainer).

    from mobilemoe.data.paths import data_paths
    p = data_paths(params)            # params: mobilemoe.config.Params (its data.out_dir)
    TokenShards(p.pretrain); load_tokenizer(p.tokenizer)

``dvc.yaml`` spells the same layout with ``${data.out_dir}``; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataPaths:
    project: Path  # the project (DVC repository) folder
    root: Path  # the data folder {project}/{data.out_dir} (shards/, tokenizer.json, ...)
    out_dir: Path  # = root (the name params use)
    raw_pretrain: Path  # sources stage: raw records (JSONL)
    raw_sft: Path
    evalgrams: Path  # evalgrams stage: n-gram index of every evaluation set
    clean_pretrain: Path  # clean stage: filtered, deduplicated, decontaminated (JSONL)
    clean_sft: Path
    tokenizer: Path  # tokenizer stage: tokenizer.json
    shards: Path  # shards stage: {pretrain,midtrain,sft}/ mix folders
    pretrain: Path
    midtrain: Path
    sft: Path
    metrics_dir: Path  # per-stage metrics JSON (DVC metrics)
    stats: Path  # all stages' stats in one JSON (what the flow logs)
    timings_dir: Path  # per-stage wall-clock times; not DVC outputs (they differ every run)

    def mix(self, name: str) -> Path:
        return {"pretrain": self.pretrain, "midtrain": self.midtrain, "sft": self.sft}[name]

    def metrics(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    def timings(self, stage: str) -> Path:
        return self.timings_dir / f"{stage}.json"


def data_paths(params=None, root: str | os.PathLike | None = None) -> DataPaths:
    """Absolute paths of the curation outputs for ``params`` (default: the project's)."""
    from ..config import load_params, project_root

    root_path = Path(root).resolve() if root is not None else project_root()
    if params is None:
        params = load_params(root_path / "params.yaml")
    out = (root_path / params.data.out_dir).resolve()
    shards = out / "shards"
    return DataPaths(
        project=root_path,
        root=out,
        out_dir=out,
        raw_pretrain=out / "raw" / "pretrain.jsonl",
        raw_sft=out / "raw" / "sft.jsonl",
        evalgrams=out / "evalgrams.npz",
        clean_pretrain=out / "clean" / "pretrain.jsonl",
        clean_sft=out / "clean" / "sft.jsonl",
        tokenizer=out / "tokenizer.json",
        shards=shards,
        pretrain=shards / "pretrain",
        midtrain=shards / "midtrain",
        sft=shards / "sft",
        metrics_dir=out / "metrics",
        stats=out / "stats.json",
        timings_dir=out / "timings",
    )

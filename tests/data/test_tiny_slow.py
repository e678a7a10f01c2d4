"""The embedded default (preset tiny) end to end: quality bars of issue 3. Slow (~30 s each)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from mobilemoe.config import load_params
from mobilemoe.data import curate, data_version
from mobilemoe.data.paths import data_paths
from mobilemoe.data.shards import TokenShards

sys.path.insert(0, str(Path(__file__).parent))
from project import ROOT, make_project  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _check(root: Path, result: dict) -> dict:
    h = result["stats"]["headline"]
    assert h["pretrain_clean_bytes"] >= 1_500_000  # issue 3: >= 1.5 MB cleaned English
    assert h["sft_pairs"] >= 1000
    assert h["eval_sets"] >= 18
    paths = data_paths(load_params(root / "params.yaml"), root)
    pre = TokenShards(paths.pretrain, verify=True)
    # the trainer takes random 128-token windows: 300 steps x 16 windows = 614k tokens
    assert len(pre.train) >= 300 * 16 * 128 * 0.6
    assert TokenShards(paths.sft).train.mask is not None
    return h


def test_tiny_system_text_without_debian_packages(tmp_path):
    """Without the Debian packages their preset still clears the bars, with one note each."""
    raw = yaml.safe_load((ROOT / "presets" / "tiny-system-text.yaml").read_text())
    for src in raw["data"]["sources"]:
        if src.get("optional"):
            src["paths"] = [f"/nonexistent/{src['name']}/*"]
    root = make_project(tmp_path / "p", "tiny-system-text", {"data.sources": raw["data"]["sources"]})
    result = curate(root)
    h = _check(root, result)
    notes = [n for s in result["stats"]["sources"]["sources"].values() for n in s["notes"]]
    assert len(notes) == 4 and all("optional source absent" in n for n in notes)
    assert set(result["stats"]["clean"]["pretrain"]["by_source"]) == {"cpython"}
    assert h["pretrain_clean_bytes"] < 2_100_000


def test_tiny_default(tmp_path):
    """The default reads only what installs with the project: no notes, the bars cleared."""
    root = make_project(tmp_path / "p", "tiny")
    result = curate(root)
    _check(root, result)
    assert all(not s["notes"] for s in result["stats"]["sources"]["sources"].values())
    # a fresh build is the committed data version: `make repro` leaves dvc.lock as it is
    assert data_version(root) == data_version(ROOT)

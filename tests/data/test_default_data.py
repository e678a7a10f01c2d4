"""The embedded default builds the same data on every machine that meets the README's
requirements: its sources install with the project, and a source that reads the machine
(a system path, an optional package, the interpreter's own stdlib) is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from mobilemoe.config import load_params, load_preset, params_path
from mobilemoe.config.base import ConfigError, build
from mobilemoe.config.data import SourceConfig
from mobilemoe.data.sources import SourceError, SourceStats, iter_source, write_cpython_snapshot

sys.path.insert(0, str(Path(__file__).parent))
from project import ROOT  # noqa: E402

SYSTEM_SOURCES = [
    {"name": "deb", "kind": "files", "paths": ["/usr/share/dict/words"]},
    {"name": "home", "kind": "files", "paths": ["~/corpus/*.txt"]},
    {"name": "up", "kind": "files", "paths": ["../corpus/*.txt"]},
    {"name": "maybe", "kind": "files", "paths": ["corpus/*.txt"], "optional": True},
    {"name": "py", "kind": "cpython"},
    {"name": "hub", "kind": "hf", "path": "HuggingFaceFW/fineweb-edu", "max_docs": 10},
]


def _read(src: dict, root: Path = ROOT) -> tuple[list[dict], SourceStats]:
    cfg = build(SourceConfig, src, "data.sources[0]")
    stats = SourceStats(cfg)
    return list(iter_source(cfg, "data.sources[0]", root, stats, 8_000_000)), stats


def test_default_sources_need_nothing_outside_the_project():
    params = load_params(params_path())
    assert params.data.self_contained
    for src in params.data.source_configs():
        assert src.outside_project() is None, src.name
        for rel in [src.snapshot] if src.kind == "cpython" else src.paths:
            assert (ROOT / rel).is_file(), rel  # shipped in the checkout
    # the one package-provided source is pinned by the lock that `make setup` installs
    kinds = {s.kind for s in params.data.source_configs()}
    assert kinds <= {"cpython", "files", "chatterbot"}
    assert "chatterbot-corpus==" in (ROOT / "requirements.lock").read_text()


@pytest.mark.parametrize("src", SYSTEM_SOURCES, ids=[s["name"] for s in SYSTEM_SOURCES])
def test_default_refuses_a_source_that_reads_the_machine(src):
    raw = yaml.safe_load(params_path().read_text())
    sources = raw["data"]["sources"] + [src]
    with pytest.raises(ConfigError) as e:
        load_preset("tiny", [f"data.sources={json.dumps(sources)}"])
    msg = str(e.value)
    assert f"data.sources[{len(sources) - 1}]" in msg and "self_contained" in msg


def test_system_text_moved_to_a_preset_of_its_own():
    params = load_preset("tiny-system-text")
    assert not params.data.self_contained
    optional = [s for s in params.data.source_configs() if s.optional]
    assert {s.name for s in optional} == {"python3_doc", "jargon", "fortunes", "devil"}
    assert all(p.startswith("/usr/share/") for s in optional for p in s.paths)
    tiny = load_preset("tiny")  # the rest is the embedded default's
    assert params.model == tiny.model and params.pretrain == tiny.pretrain
    assert params.midtrain == tiny.midtrain


def test_snapshot_reads_what_the_interpreter_gives(tmp_path):
    """The shipped text is the live reader's, ids included; ``parts`` selects from it."""
    snap = tmp_path / "cpython.jsonl.gz"
    info = write_cpython_snapshot(snap, parts=("topics",))
    live, _ = _read({"name": "cpython", "kind": "cpython", "parts": ["topics"]})
    shipped, stats = _read({"name": "cpython", "kind": "cpython", "parts": ["topics"], "snapshot": str(snap)})
    assert shipped == live and len(shipped) == info["records"] - info["empty"] > 50
    assert stats.counts["files"] == 1
    none, _ = _read({"name": "cpython", "kind": "cpython", "parts": ["docstrings"], "snapshot": str(snap)})
    assert none == []  # that snapshot holds topics only


def test_shipped_snapshot_matches_its_python_release(tmp_path):
    """Refreshing the shipped file on the release it is named for changes no byte."""
    params = load_params(params_path())
    snap = next(s.snapshot for s in params.data.source_configs() if s.kind == "cpython")
    release = Path(snap).name.removeprefix("cpython-").removesuffix(".jsonl.gz")
    if sys.version.split()[0] != release:
        pytest.skip(f"the snapshot is CPython {release}'s; this is {sys.version.split()[0]}")
    fresh = tmp_path / "fresh.jsonl.gz"
    write_cpython_snapshot(fresh)
    assert fresh.read_bytes() == (ROOT / snap).read_bytes()


def test_missing_snapshot_names_the_key_and_the_command(tmp_path):
    with pytest.raises(SourceError) as e:
        _read({"name": "cpython", "kind": "cpython", "snapshot": "corpus/none.jsonl.gz"}, tmp_path)
    msg = str(e.value)
    assert "data.sources[0].snapshot" in msg and "python -m mobilemoe.data.sources snapshot" in msg

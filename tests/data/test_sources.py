"""Sources: every kind reads real files; bad records are counted and skipped, never a crash."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mobilemoe.config import load_preset
from mobilemoe.config.base import ConfigError, build
from mobilemoe.config.data import DataConfig, SourceConfig
from mobilemoe.data.sources import SourceError, SourceStats, iter_source, read_sources

MAX = 8_000_000


def _read(src: dict, root: Path, max_bytes: int = MAX):
    cfg = build(SourceConfig, src, "data.sources[0]")
    stats = SourceStats(cfg)
    return list(iter_source(cfg, "data.sources[0]", root, stats, max_bytes)), stats.counts, stats


def test_cpython_text_is_real_english_with_tags():
    recs, counts, _ = _read({"name": "cpython", "kind": "cpython", "licence": "PSF-2.0"}, Path("."))
    total = sum(len(r["text"]) for r in recs)
    assert total > 1_800_000  # topics (~0.46 MB) + stdlib docstrings (~1.6 MB)
    assert all(r["source"] == "cpython" and r["licence"] == "PSF-2.0" for r in recs)
    ids = {r["id"] for r in recs}
    assert "cpython:topic:assignment" in ids and "cpython:doc:json/__init__.py" in ids
    assert counts["kept"] == len(recs)


def test_txt_bad_input_is_counted_not_fatal(tmp_path):
    (tmp_path / "good.txt").write_text("First paragraph of text.\n\nSecond one.\n")
    (tmp_path / "mixed.txt").write_bytes(b"fine paragraph\n\n\xff\xfe broken utf-8\n\n   \n\nlast one\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    with open(tmp_path / "huge.txt", "wb") as f:  # a single 50 MB line
        f.write(b"x" * 50_000_000)
    recs, c, _ = _read({"name": "t", "kind": "files", "paths": ["*.txt"], "split": "paragraph"}, tmp_path)
    texts = sorted(r["text"].strip() for r in recs)
    assert texts == ["First paragraph of text.", "Second one.", "fine paragraph", "last one"]
    assert c["invalid_utf8"] == 1 and c["too_large"] == 1 and c["empty"] >= 2
    # whole-file mode: the 50 MB file is skipped unread
    recs, c, _ = _read({"name": "t", "kind": "files", "paths": ["huge.txt"]}, tmp_path)
    assert recs == [] and c["too_large"] == 1


def test_txt_separator_regex_and_gzip(tmp_path):
    with gzip.open(tmp_path / "cookies.gz", "wt") as f:
        f.write("A fortune.\n%\nAnother one,\nover two lines.\n%\n%\nLast.\n")
    recs, c, _ = _read({"name": "f", "kind": "files", "paths": ["cookies.gz"], "split": "%"}, tmp_path)
    assert [r["text"].strip() for r in recs] == ["A fortune.", "Another one,\nover two lines.", "Last."]
    assert c["empty"] == 1


def test_jsonl_malformed_rows_and_missing_fields(tmp_path):
    lines = [
        json.dumps({"text": "a good document"}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps(["not", "a", "dict"]),
        json.dumps({"text": 42}),
        json.dumps({"text": "   "}),
        "",
        json.dumps({"text": None}),
    ]
    p = tmp_path / "d.jsonl"
    p.write_bytes(
        ("\n".join(lines) + "\n").encode()
        + b'{"text": "\xff bad"}\n'
        + json.dumps({"text": "y" * 2000}).encode()
        + b"\n"
    )
    recs, c, _ = _read({"name": "j", "kind": "files", "paths": ["d.jsonl"]}, tmp_path, max_bytes=1000)
    assert [r["text"] for r in recs] == ["a good document"]
    assert c["malformed"] == 3 and c["missing_field"] == 2 and c["empty"] == 2
    assert c["invalid_utf8"] == 1 and c["too_large"] == 1 and c["records"] == 10


def test_parquet_rows_columns_and_corrupt_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": ["one document", None, "", "two"], "n": [1, 2, 3, 4]}), tmp_path / "a.parquet"
    )
    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    recs, c, stats = _read({"name": "p", "kind": "files", "paths": ["*.parquet"]}, tmp_path)
    assert [r["text"] for r in recs] == ["one document", "two"]
    assert c["missing_field"] == 2 and c["empty"] == 1 and c["unreadable_files"] == 1
    assert any("b.parquet" in n and "no column text" in n for n in stats.notes)


def test_sft_pairs_from_jsonl(tmp_path):
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"q": "Hi?", "a": "Hello."}) + "\n" + json.dumps({"q": "only prompt"}) + "\n"
    )
    recs, c, _ = _read(
        {
            "name": "s",
            "kind": "files",
            "use": "sft",
            "paths": ["p.jsonl"],
            "prompt_field": "q",
            "response_field": "a",
        },
        tmp_path,
    )
    assert recs == [
        {"id": "s:p.jsonl:0", "prompt": "Hi?", "response": "Hello.", "source": "s", "licence": "unknown"}
    ]
    assert c["missing_field"] == 1


def test_dictd_dictionary(tmp_path):
    body = b"00-database-short\nTest dict\nWORD, n.  A unit of language.\nTHING, n.  Anything at all.\n"
    first = body.index(b"WORD")
    second = body.index(b"THING")

    def b64(n):
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return alphabet[n] if n < 64 else b64(n // 64) + b64(n % 64)

    (tmp_path / "t.index").write_text(
        f"00databaseshort\tA\tR\nword\t{b64(first)}\t{b64(second - first)}\n"
        f"thing\t{b64(second)}\t{b64(len(body) - second)}\n"
    )
    with gzip.open(tmp_path / "t.dict.dz", "wb") as f:
        f.write(body)
    recs, c, _ = _read({"name": "d", "kind": "files", "paths": ["t.index"]}, tmp_path)
    assert [r["text"].strip() for r in recs] == [
        "WORD, n.  A unit of language.",
        "THING, n.  Anything at all.",
    ]


def test_caps(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"text": f"doc {i} " * 10}) + "\n" for i in range(50))
    )
    recs, c, _ = _read({"name": "j", "kind": "files", "paths": ["d.jsonl"], "max_docs": 7}, tmp_path)
    assert len(recs) == 7 and c["over_cap"] == 1 and c["records"] == 8  # stops reading at the cap
    recs, c, _ = _read({"name": "j", "kind": "files", "paths": ["d.jsonl"], "max_chars": 250}, tmp_path)
    assert sum(len(r["text"]) for r in recs) == 240 and len(recs) == 4  # 60 chars each


def test_hf_streaming_from_a_local_hub_repository(tmp_path):
    repo = tmp_path / "hub" / "tiny-corpus"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/train-*.jsonl\n---\n# a dataset laid out as on the hub\n"
    )
    for shard in range(2):
        with open(repo / "data" / f"train-{shard:05d}.jsonl", "w") as f:
            for i in range(30):
                f.write(json.dumps({"content": f"shard {shard} document {i}", "meta": i}) + "\n")
    recs, c, _ = _read(
        {
            "name": "hub",
            "kind": "hf",
            "path": "hub/tiny-corpus",
            "hf_split": "train",
            "text_field": "content",
            "max_docs": 40,
            "licence": "CC0-1.0",
        },
        tmp_path,
    )
    assert len(recs) == 40 and c["records"] == 40
    assert recs[0]["text"] == "shard 0 document 0" and recs[0]["licence"] == "CC0-1.0"


def test_missing_dataset_and_files_stop_with_a_message(tmp_path):
    with pytest.raises(SourceError, match=r"data.sources\[0\] \(gone\): cannot stream dataset"):
        _read({"name": "gone", "kind": "hf", "path": "no-such-org/no-such-dataset", "max_docs": 5}, tmp_path)
    with pytest.raises(SourceError) as e:
        _read({"name": "mine", "kind": "files", "paths": ["missing/*.txt"]}, tmp_path)
    assert "mine" in str(e.value) and "missing/*.txt" in str(e.value) and "optional" in str(e.value)
    recs, c, stats = _read(
        {"name": "deb", "kind": "files", "paths": ["/usr/share/nothing-here/*"], "optional": True}, tmp_path
    )
    assert recs == [] and "optional source absent" in stats.notes[0]


def test_unknown_kind_and_bad_keys_name_the_key():
    with pytest.raises(ConfigError, match=r"data.sources\[0\].kind: must be one of"):
        load_preset("smoke", ["data.sources=[{name: x, kind: web}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[0\].max_docs"):
        load_preset("smoke", ["data.sources=[{name: x, kind: hf, path: a/b}]"])
    with pytest.raises(ConfigError, match=r"data.sources\[1\].name: duplicate"):
        load_preset("smoke", ["data.sources=[{name: x, kind: cpython}, {name: x, kind: cpython}]"])


def test_read_sources_writes_both_outputs_atomically(tmp_path):
    cfg = build(
        DataConfig,
        {
            "sources": [
                {"name": "cpython", "kind": "cpython", "parts": ["topics"], "max_docs": 5},
                {"name": "chat", "kind": "chatterbot", "use": "sft", "max_docs": 20},
            ]
        },
        "data",
    )
    stats = read_sources(cfg, tmp_path, tmp_path / "raw" / "pretrain.jsonl", tmp_path / "raw" / "sft.jsonl")
    pre = [json.loads(x) for x in (tmp_path / "raw" / "pretrain.jsonl").read_text().splitlines()]
    sft = [json.loads(x) for x in (tmp_path / "raw" / "sft.jsonl").read_text().splitlines()]
    assert len(pre) == 5 and len(sft) == 20 and set(sft[0]) >= {"prompt", "response", "licence"}
    assert stats["sources"]["chat"]["licence"] == "BSD-3-Clause" or sft[0]["licence"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["pretrain.jsonl", "sft.jsonl"]
    # a failing source leaves the previous outputs as they were (no half-written file)
    bad = build(DataConfig, {"sources": [{"name": "x", "kind": "files", "paths": ["nope.txt"]}]}, "data")
    with pytest.raises(SourceError):
        read_sources(bad, tmp_path, tmp_path / "raw" / "pretrain.jsonl", tmp_path / "raw" / "sft.jsonl")
    assert len((tmp_path / "raw" / "pretrain.jsonl").read_text().splitlines()) == 5
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["pretrain.jsonl", "sft.jsonl"]


def test_source_min_chars_reaches_the_clean_stage(tmp_path):
    from mobilemoe.data.curation import clean_pretrain

    cookies = [
        "A day without sunshine is like, you know, night.",
        "The best way to predict the future is to invent it, said a man.",
    ]
    (tmp_path / "f").write_text("\n%\n".join(cookies) + "\n")
    src = {"name": "f", "kind": "files", "paths": ["f"], "split": "%"}
    plain, _, _ = _read(src, tmp_path)
    relaxed, _, _ = _read({**src, "min_chars": 40}, tmp_path)
    assert "min_chars" not in plain[0] and relaxed[0]["min_chars"] == 40
    assert clean_pretrain(plain, DataConfig())[0] == []
    kept, stats = clean_pretrain(relaxed, DataConfig())
    assert [d["text"] for d in kept] == cookies
    assert stats["filters"]["min_chars"]["kept"] == 2

"""Read the sources of ``data.sources`` into raw records, each tagged with source and licence.

    from mobilemoe.data.sources import read_sources
    stats = read_sources(params.data, root, pretrain_out, sft_out)

Pre-training records are ``{"id", "text", "source", "licence"[, "min_chars"]}`` (the
source's own ``min_chars``, read by the clean stage); SFT records are
``{"id", "prompt", "response", "source", "licence"}``. ``max_docs``/``max_chars`` stop
reading at the first record over the cap (files are read in sorted order: reproducible).
Bad records (invalid UTF-8, empty, over ``data.max_record_bytes``, malformed JSON/parquet
rows, missing fields) are counted per source and skipped; a missing file of a required
source or a dataset that cannot be opened stops with a :class:`SourceError` naming it.
Optional sources that are absent are skipped with a note (the Debian text packages of
preset tiny-system-text).
The ``cpython`` kind reads a shipped ``snapshot`` of CPython's text when one is set (the
default's: the same data on every machine), else the running interpreter's stdlib.
"""

from __future__ import annotations

import ast
import fnmatch
import glob
import gzip
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from ..config.data import DataConfig, SourceConfig
from ..errors import UserError
from .io import atomic_open, nbytes

CPYTHON_LICENCE = "PSF-2.0"
CHATTERBOT_LICENCE = "BSD-3-Clause"
# Stdlib folders that are tests, generated tables or vendored tools, not documentation.
_STDLIB_SKIP = {
    "test",
    "tests",
    "site-packages",
    "dist-packages",
    "idlelib",
    "lib2to3",
    "pydoc_data",
    "turtledemo",
    "ensurepip",
    "__phello__",
    "encodings",
}


class SourceError(UserError):
    pass


class SourceStats:
    """Counts of one source: records read, kept, skipped by reason, bytes kept."""

    REASONS = ("invalid_utf8", "empty", "too_large", "malformed", "missing_field", "over_cap")

    def __init__(self, src: SourceConfig) -> None:
        self.src = src
        self.counts: dict[str, int] = {
            "files": 0,
            "unreadable_files": 0,
            "records": 0,
            "kept": 0,
            "kept_bytes": 0,
            **{r: 0 for r in self.REASONS},
        }
        self.notes: list[str] = []
        self.chars = 0

    def skip(self, reason: str) -> None:
        self.counts[reason] += 1

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: source {self.src.name}: {text}", file=sys.stderr)

    def to_dict(self) -> dict:
        return {
            "kind": self.src.kind,
            "use": self.src.use,
            "licence": self.src.licence,
            **self.counts,
            "notes": self.notes,
        }


# ---------------------------------------------------------------- record extraction


def _text_of(row: Any, field: str, stats: SourceStats) -> str | None:
    if not isinstance(row, dict):
        stats.skip("malformed")
        return None
    if field not in row or row[field] is None:
        stats.skip("missing_field")
        return None
    value = row[field]
    if not isinstance(value, str):
        stats.skip("malformed")
        return None
    return value


def _from_row(row: Any, src: SourceConfig, stats: SourceStats) -> dict | None:
    """A pretrain/sft record from one JSON/parquet/HF row, or None (counted)."""
    if src.use == "sft":
        prompt = _text_of(row, src.prompt_field, stats)
        if prompt is None:
            return None
        response = _text_of(row, src.response_field, stats)
        if response is None:
            return None
        if not prompt.strip() or not response.strip():
            stats.skip("empty")
            return None
        return {"prompt": prompt, "response": response}
    text = _text_of(row, src.text_field, stats)
    if text is None:
        return None
    if not text.strip():
        stats.skip("empty")
        return None
    return {"text": text}


def _from_bytes(raw: bytes, src: SourceConfig, stats: SourceStats, max_bytes: int) -> dict | None:
    if len(raw) > max_bytes:
        stats.skip("too_large")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("invalid_utf8")
        return None
    if not text.strip():
        stats.skip("empty")
        return None
    return {"text": text}


# ---------------------------------------------------------------- kinds


def _cpython(
    src: SourceConfig, key: str, root: Path, stats: SourceStats, max_bytes: int
) -> Iterator[tuple[str, dict]]:
    """CPython's text from its ``snapshot`` when set (the same on every machine), else from
    the running interpreter (its stdlib differs between Python releases)."""
    if src.snapshot is not None:
        yield from _cpython_snapshot(src, src.snapshot, key, root, stats, max_bytes)
        return
    yield from _cpython_live(src, stats, max_bytes)


def _cpython_snapshot(
    src: SourceConfig, snapshot: str, key: str, root: Path, stats: SourceStats, max_bytes: int
):
    path = Path(snapshot) if os.path.isabs(snapshot) else root / snapshot
    if not path.is_file():
        raise SourceError(
            f"{key}.snapshot ({src.name}): {path} is missing; write one with "
            f"`python -m mobilemoe.data.sources snapshot {snapshot}`"
        )
    prefixes = tuple(_CPYTHON_PARTS[p] for p in src.parts)
    stats.counts["files"] += 1
    with _open_bytes(path) as f:
        for line in f:
            row = json.loads(line)
            if not row["id"].startswith(prefixes):
                continue
            stats.counts["records"] += 1
            rec = _from_bytes(row["text"].encode("utf-8"), src, stats, max_bytes)
            if rec:
                yield row["id"], rec


# record id prefix of each part (the snapshot keeps the live reader's ids)
_CPYTHON_PARTS = {"topics": "topic:", "docstrings": "doc:"}


def write_cpython_snapshot(out: Path, parts: tuple[str, ...] = ("topics", "docstrings")) -> dict:
    """Write the running interpreter's CPython text as the gzipped JSONL a ``snapshot`` reads
    (the bytes depend only on that text: no timestamp in the gzip header)."""
    src = SourceConfig(name="cpython", kind="cpython", licence=CPYTHON_LICENCE, parts=list(parts))
    stats = SourceStats(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
        for rid, rec in _cpython_live(src, stats, sys.maxsize):
            f.write((json.dumps({"id": rid, "text": rec["text"]}, ensure_ascii=False) + "\n").encode("utf-8"))
    return {
        "python": sys.version.split()[0],
        "records": stats.counts["records"],
        "empty": stats.counts["empty"],
        "path": str(out),
    }


def _cpython_live(src: SourceConfig, stats: SourceStats, max_bytes: int) -> Iterator[tuple[str, dict]]:
    if "topics" in src.parts:
        from pydoc_data.topics import topics  # the help() topics: the language reference in prose

        stats.counts["files"] += 1
        for key in sorted(topics):
            stats.counts["records"] += 1
            rec = _from_bytes(topics[key].encode("utf-8"), src, stats, max_bytes)
            if rec:
                yield f"topic:{key}", rec
    if "docstrings" in src.parts:
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for path in sorted(stdlib.rglob("*.py")):
            rel = path.relative_to(stdlib)
            if _STDLIB_SKIP.intersection(rel.parts):
                continue
            stats.counts["files"] += 1
            stats.counts["records"] += 1
            text = _module_docs(path, rel)
            if text is None:
                stats.counts["unreadable_files"] += 1
                continue
            rec = _from_bytes(text.encode("utf-8"), src, stats, max_bytes)
            if rec:
                yield f"doc:{rel.as_posix()}", rec


def _module_docs(path: Path, rel: Path) -> str | None:
    """One module's API documentation: its docstring, then each class/function's, pydoc-like."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
    parts: list[str] = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        parts.append(f"Module {module}\n\n{doc}")

    def visit(node, prefix: str) -> None:
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_") and not child.name.startswith("__"):
                    continue  # private helpers: internal notes, often terse
                qual = f"{prefix}{child.name}"
                d = ast.get_docstring(child, clean=True)
                if d:
                    head = f"class {qual}" if isinstance(child, ast.ClassDef) else f"{qual}()"
                    parts.append(f"{head}\n{d}")
                if isinstance(child, ast.ClassDef):
                    visit(child, qual + ".")

    visit(tree, "")  # headings without the module path: it would repeat in every one
    return "\n\n".join(parts) if parts else ""


def _resolve_files(src: SourceConfig, key: str, root: Path, stats: SourceStats) -> list[Path]:
    files: list[Path] = []
    missing = []
    for pattern in src.paths:
        full = pattern if os.path.isabs(pattern) else str(root / pattern)
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(full), recursive=True))
        found = [p for p in found if p.is_file() and not any(fnmatch.fnmatch(p.name, x) for x in src.exclude)]
        if not found:
            missing.append(full)
        files.extend(found)
    if missing and not src.optional:
        raise SourceError(
            f"{key} ({src.name}): no file matches {', '.join(missing)}; fix the "
            "path, or set optional: true to skip it when absent"
        )
    for m in missing:
        stats.note(f"optional source absent: no file matches {m}; skipped")
    return files


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for suffix in (".gz", ".dz"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".index"):
        return "dictd"
    return "txt"


def _open_bytes(path: Path):
    # dictzip (.dz) is gzip-compatible; read both transparently
    return gzip.open(path, "rb") if path.suffix in (".gz", ".dz") else open(path, "rb")


def _txt(path: Path, src: SourceConfig, stats: SourceStats, max_bytes: int):
    if src.split == "file" and path.suffix not in (".gz", ".dz") and path.stat().st_size > max_bytes:
        stats.counts["records"] += 1
        stats.skip("too_large")  # not even read
        return
    with _open_bytes(path) as f:
        data = f.read()
    if src.split == "file":
        pieces = [data]
    elif src.split == "paragraph":
        pieces = re.split(rb"\n[ \t\r]*\n", data)
    else:
        pieces = re.split(b"(?m)^(?:" + src.split.encode() + rb")\r?$\n?", data)
    for i, raw in enumerate(pieces):
        stats.counts["records"] += 1
        rec = _from_bytes(raw, src, stats, max_bytes)
        if rec:
            yield str(i), rec


def _jsonl(path: Path, src: SourceConfig, stats: SourceStats, max_bytes: int):
    with _open_bytes(path) as f:
        for i, line in enumerate(f):
            stats.counts["records"] += 1
            if len(line) > max_bytes:
                stats.skip("too_large")
                continue
            if not line.strip():
                stats.skip("empty")
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                stats.skip("invalid_utf8")
                continue
            except ValueError:
                stats.skip("malformed")
                continue
            rec = _from_row(row, src, stats)
            if rec:
                yield str(i), rec


def _parquet(path: Path, src: SourceConfig, stats: SourceStats, max_bytes: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [src.prompt_field, src.response_field] if src.use == "sft" else [src.text_field]
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except (pa.ArrowException, OSError) as e:
        stats.counts["unreadable_files"] += 1
        stats.note(f"{path}: not a readable parquet file ({e}); skipped")
        return
    absent = [f for f in fields if f not in names]
    if absent:
        stats.counts["records"] += pf.metadata.num_rows
        stats.counts["missing_field"] += pf.metadata.num_rows
        stats.note(f"{path}: no column {', '.join(absent)} (columns: {', '.join(sorted(names))})")
        return
    i = 0
    try:
        for batch in pf.iter_batches(columns=fields, batch_size=1024):
            for row in batch.to_pylist():
                stats.counts["records"] += 1
                i += 1
                rec = _from_row(row, src, stats)
                if rec and sum(nbytes(v) for v in rec.values()) > max_bytes:
                    stats.skip("too_large")
                    continue
                if rec:
                    yield str(i - 1), rec
    except (pa.ArrowException, OSError) as e:
        stats.counts["unreadable_files"] += 1
        stats.note(f"{path}: unreadable after {i} rows ({e}); the rest skipped")


def _dictd(path: Path, src: SourceConfig, stats: SourceStats, max_bytes: int):
    """A dictd dictionary: ``NAME.index`` (word, base64 offset, base64 length) + NAME.dict[.dz]."""
    base = str(path).removesuffix(".index")
    body_path = next((Path(base + s) for s in (".dict.dz", ".dict") if Path(base + s).is_file()), None)
    if body_path is None:
        stats.counts["unreadable_files"] += 1
        stats.note(f"{path}: no {base}.dict[.dz] beside the index; skipped")
        return
    with _open_bytes(body_path) as f:
        body = f.read()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + alphabet.index(ch)
        return n

    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        parts = line.split("\t")
        stats.counts["records"] += 1
        if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
            stats.skip("malformed" if len(parts) < 3 else "empty")
            continue
        try:
            off, length = b64(parts[1]), b64(parts[2])
        except ValueError:
            stats.skip("malformed")
            continue
        rec = _from_bytes(body[off : off + length], src, stats, max_bytes)
        if rec:
            yield f"{i}:{parts[0]}", rec


_READERS = {"txt": _txt, "jsonl": _jsonl, "parquet": _parquet, "dictd": _dictd}


def _files(src: SourceConfig, key: str, root: Path, stats: SourceStats, max_bytes: int):
    for path in _resolve_files(src, key, root, stats):
        stats.counts["files"] += 1
        fmt = _format_of(path, src.format)
        if src.use == "sft" and fmt in ("txt", "dictd"):
            raise SourceError(
                f"{key} ({src.name}): sft sources need jsonl or parquet rows with "
                f"{src.prompt_field!r}/{src.response_field!r}; {path} is {fmt}"
            )
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = str(path)
        try:
            for rid, rec in _READERS[fmt](path, src, stats, max_bytes):
                yield f"{rel}:{rid}", rec
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            stats.counts["unreadable_files"] += 1
            stats.note(f"{path}: unreadable ({e}); skipped")


def _hf(src: SourceConfig, key: str, root: Path, stats: SourceStats, max_bytes: int):
    import datasets

    path = src.path
    assert path is not None and src.max_docs is not None  # SourceConfig.validate requires both for hf
    local = Path(path) if os.path.isabs(path) else root / path
    if local.exists():
        path = str(local)  # a folder laid out as a hub dataset repository
    try:
        ds = datasets.load_dataset(path, src.config, split=src.hf_split, streaming=True)
        rows = iter(ds)
        stats.counts["files"] += 1
        for i, row in enumerate(rows):
            if i >= src.max_docs:
                break
            stats.counts["records"] += 1
            rec = _from_row(row, src, stats)
            if rec and sum(nbytes(v) for v in rec.values()) > max_bytes:
                stats.skip("too_large")
                continue
            if rec:
                yield str(i), rec
    except (
        FileNotFoundError,
        ValueError,
        ConnectionError,
        OSError,
        datasets.exceptions.DatasetNotFoundError,
    ) as e:
        msg = (
            f"{key} ({src.name}): cannot stream dataset {src.path!r} config={src.config!r} "
            f"split={src.hf_split!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        )
        if src.optional:
            stats.note(msg + "; optional, skipped")
            return
        raise SourceError(
            msg + " (offline? set HF_HUB_OFFLINE=0 with network, or point path at a local copy)"
        ) from None


def _chatterbot(src: SourceConfig, key: str, root: Path, stats: SourceStats, max_bytes: int):
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        msg = (
            f"{key} ({src.name}): package chatterbot-corpus is not installed "
            "(pip install chatterbot-corpus==1.3.3)"
        )
        if src.optional:
            stats.note(msg + "; skipped")
            return
        raise SourceError(msg)
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    for lang in src.languages:
        folder = data / lang
        if not folder.is_dir():
            raise SourceError(
                f"{key}.languages: no chatterbot-corpus language {lang!r} "
                f"(have {', '.join(sorted(p.name for p in data.iterdir()))})"
            )
        for path in sorted(folder.glob("*.yml")):
            stats.counts["files"] += 1
            try:
                # BaseLoader: every scalar stays the text it is (safe_load would turn a
                # reply "Yes" into True and "1.0" into a float)
                doc = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
                convs = doc["conversations"]
            except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError) as e:
                stats.counts["unreadable_files"] += 1
                stats.note(f"{path}: unreadable ({type(e).__name__}); skipped")
                continue
            for c, conv in enumerate(convs or []):
                if not isinstance(conv, list):
                    stats.counts["records"] += 1
                    stats.skip("malformed")
                    continue
                # consecutive turns: each statement and the reply that follows it
                for t in range(len(conv) - 1):
                    stats.counts["records"] += 1
                    prompt, response = conv[t], conv[t + 1]
                    if not isinstance(prompt, str) or not isinstance(response, str):
                        stats.skip("malformed")
                        continue
                    if not prompt.strip() or not response.strip():
                        stats.skip("empty")
                        continue
                    yield f"{lang}/{path.stem}:{c}:{t}", {"prompt": prompt, "response": response}


def iter_source(
    src: SourceConfig, key: str, root: Path, stats: SourceStats, max_bytes: int
) -> Iterator[dict]:
    """Records of one source, tagged, with its ``max_docs``/``max_chars`` caps applied."""
    if src.kind == "cpython":
        it = _cpython(src, key, root, stats, max_bytes)
    elif src.kind == "files":
        it = _files(src, key, root, stats, max_bytes)
    elif src.kind == "hf":
        it = _hf(src, key, root, stats, max_bytes)
    elif src.kind == "chatterbot":
        it = _chatterbot(src, key, root, stats, max_bytes)
    else:  # the config's Literal makes this unreachable; keep the message for direct callers
        raise SourceError(f"{key}.kind: unknown source kind {src.kind!r}")
    extra = {"min_chars": src.min_chars} if src.min_chars is not None else {}
    for rid, rec in it:
        size = sum(len(v) for v in rec.values())
        if (src.max_docs is not None and stats.counts["kept"] >= src.max_docs) or (
            src.max_chars is not None and stats.chars + size > src.max_chars
        ):
            stats.skip("over_cap")
            stats.note(
                f"cap reached (max_docs={src.max_docs}, max_chars={src.max_chars}) after "
                f"{stats.counts['kept']} records; the rest is not read"
            )
            break  # records are in a fixed order (sorted files): the cut is reproducible
        stats.chars += size
        stats.counts["kept"] += 1
        stats.counts["kept_bytes"] += sum(nbytes(v) for v in rec.values())
        yield {"id": f"{src.name}:{rid}", **rec, "source": src.name, "licence": src.licence, **extra}


def read_sources(cfg: DataConfig, root: Path, pretrain_out: Path, sft_out: Path) -> dict:
    """Read every source; write raw JSONL records atomically; return per-source stats."""
    if not cfg.sources:
        raise SourceError("data.sources: empty; list at least one source (see presets/tiny.yaml)")
    out: dict[str, Any] = {"sources": {}}
    with atomic_open(pretrain_out) as fp, atomic_open(sft_out) as fs:
        for i, src in enumerate(cfg.source_configs()):
            stats = SourceStats(src)
            f = fs if src.use == "sft" else fp
            for rec in iter_source(src, f"data.sources[{i}]", root, stats, cfg.max_record_bytes):
                f.write(json.dumps(rec, ensure_ascii=False))
                f.write("\n")
            out["sources"][src.name] = stats.to_dict()
    for use in ("pretrain", "sft"):
        srcs = [s for s in out["sources"].values() if s["use"] == use]
        out[use] = {"records": sum(s["kept"] for s in srcs), "bytes": sum(s["kept_bytes"] for s in srcs)}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mobilemoe.data.sources snapshot OUT``: refresh the shipped CPython text."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mobilemoe.data.sources")
    parser.add_argument("command", choices=["snapshot"])
    parser.add_argument("out", type=Path, help="e.g. mobilemoe/data/corpus/cpython-3.11.7.jsonl.gz")
    args = parser.parse_args(argv)
    print(json.dumps(write_cpython_snapshot(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small I/O helpers of the curation stages: atomic writes, JSONL, per-filter stats.

Every stage output is written to a temporary name beside its target, flushed, fsynced and
renamed, so an interrupted stage never leaves a file a later stage would take as valid.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open ``path.tmp-PID`` for writing; on success rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    kwargs = {"encoding": encoding} if "b" not in mode else {}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class FilterStats:
    """Ordered per-filter counts: documents kept/dropped and bytes (UTF-8) of each."""

    def __init__(self) -> None:
        self.filters: dict[str, dict[str, int]] = {}

    def _entry(self, name: str) -> dict[str, int]:
        return self.filters.setdefault(
            name, {"kept": 0, "dropped": 0, "kept_bytes": 0, "dropped_bytes": 0})

    def keep(self, name: str, nbytes: int) -> None:
        e = self._entry(name)
        e["kept"] += 1
        e["kept_bytes"] += nbytes

    def drop(self, name: str, nbytes: int) -> None:
        e = self._entry(name)
        e["dropped"] += 1
        e["dropped_bytes"] += nbytes

    def record(self, name: str, kept: int, dropped: int, kept_bytes: int, dropped_bytes: int) -> None:
        e = self._entry(name)
        e["kept"] += kept
        e["dropped"] += dropped
        e["kept_bytes"] += kept_bytes
        e["dropped_bytes"] += dropped_bytes

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.filters.items()}


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))

"""Small I/O helpers of the curation stages: JSON(L) written atomically, per-filter stats.

Every stage output is written to a temporary name beside its target, flushed, fsynced and
renamed, so an interrupted stage never leaves a file a later stage would take as valid.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator

from ..io import atomic_open  # noqa: F401  (the one atomic writer; re-exported here)


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
        return self.filters.setdefault(name, {"kept": 0, "dropped": 0, "kept_bytes": 0, "dropped_bytes": 0})

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

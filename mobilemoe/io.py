"""Atomic file writes: the one helper every layer uses (data, training, export, eval, pipeline).

A file or folder is written under a temporary name beside its target, flushed and
fsynced, then renamed over the target in one step, so a reader (a later stage, a resumed
run, a cache lookup) sees either the old content or the new, never half of it, and an
interrupted write leaves no file that could be taken as valid.

    with atomic_open(path) as f: ...           # any streamed write, text or "wb"
    write_bytes_atomic(path, data)             # bytes (a .pte)
    write_text_atomic(path, text)
    write_json_atomic(path, obj)               # indent 1, sorted keys
    replace_dir(src, dest)                     # copy a folder into place
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path`` for writing; on success rename it over ``path``.

    The temporary name is unique (several processes may write the same target; the last
    rename wins, whole) and starts with a dot, so folder listings skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with open(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the target gets a normal file's mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> Path:
    """JSON with one-space indent; ``default=str`` so paths and the like need no care."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys, default=str))


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the folder ``src`` to ``dest`` through a temporary folder (a reader never sees half)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest

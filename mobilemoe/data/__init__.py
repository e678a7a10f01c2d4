"""Data curation as DVC stages, and what the rest of the project reads from it.

    from mobilemoe.data import curate, data_version
    result = curate()                 # = `dvc repro` of dvc.yaml through DVC's Python API
    data_version()                    # {"data/shards": "<md5>.dir", ...} from dvc.lock

    from mobilemoe.data.paths import data_paths          # where the outputs are
    from mobilemoe.data.shards import TokenShards        # packed token shards (trainer)
    from mobilemoe.data.tokenizer import load_tokenizer, encode_chat
    from mobilemoe.data.evalsets import load_eval_set    # evaluation sets (eval, decontam)

The stages (``mobilemoe/data/stages.py``): sources -> evalgrams -> clean -> tokenizer ->
shards. Importing this package stays light (no torch, no DVC until ``curate`` is called).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import UserError

__all__ = ["curate", "data_version", "DataError"]


class DataError(UserError):
    pass


def _root(root, params_path) -> Path:
    if root is None and params_path is not None:
        root = Path(params_path).resolve().parent
    if root is None:
        from ..config import project_root

        root = project_root()
    root = Path(root).resolve()
    if params_path is not None and Path(params_path).resolve() != root / "params.yaml":
        raise DataError(
            f"{params_path}: DVC reads the project's params.yaml ({root / 'params.yaml'}); "
            "make this file that one (`mobilemoe use-preset NAME`, or copy it) or pass "
            "root= the folder that holds it"
        )
    return root


def curate(root: str | os.PathLike | None = None, params_path: str | os.PathLike | None = None) -> dict:
    """Run the data pipeline (``dvc repro``) in the project at ``root``; return what ran,
    the stats (``stats.json``), the data version (dvc.lock md5s) and the output paths.
    Stages whose params and inputs are unchanged are not rerun."""
    root = _root(root, params_path)
    if not (root / ".dvc").is_dir():
        raise DataError(f"{root}: not a DVC project (no .dvc/); run `dvc init` there")
    if not (root / "dvc.yaml").is_file():
        raise DataError(f"{root}/dvc.yaml: missing; the data stages are defined there")
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from ..config import load_params
    from .io import read_json
    from .paths import data_paths

    params = load_params(root / "params.yaml")  # a bad params file fails here, with its message
    try:
        # DVC resolves some paths against the working directory (as its CLI runs from inside
        # the repository): run it from there, and go back after
        with contextlib.chdir(root), Repo(str(root)) as repo:
            ran = repo.reproduce()
    except DvcException as e:
        raise DataError(
            f"dvc repro in {root} failed: {e} (the failing stage's own error is printed above it)"
        ) from None
    paths = data_paths(params, root)
    stats = read_json(paths.stats) if paths.stats.exists() else {}
    return {
        "root": str(root),
        "stages_run": [s.addressing for s in ran],
        "stats": stats,
        "stats_path": str(paths.stats),
        "data_version": data_version(root),
        "paths": {
            "tokenizer": str(paths.tokenizer),
            "pretrain": str(paths.pretrain),
            "midtrain": str(paths.midtrain),
            "sft": str(paths.sft),
            "stats": str(paths.stats),
        },
    }


def data_version(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Output path -> md5 of every stage output in ``dvc.lock`` (the data's version)."""
    import yaml

    root = _root(root, None)
    lock = root / "dvc.lock"
    if not lock.is_file():
        raise DataError(f"{lock}: missing; run `dvc repro` (or `mobilemoe data curate`) first")
    try:
        data = yaml.safe_load(lock.read_text()) or {}
        out = {}
        for stage in (data.get("stages") or {}).values():
            for o in stage.get("outs") or []:
                out[o["path"]] = o["md5"]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
        raise DataError(f"{lock}: unreadable ({e}); rerun `dvc repro` to rewrite it") from None
    return dict(sorted(out.items()))

"""A throwaway copy of the project (code, dvc.yaml, a preset as params.yaml) with its own
git + DVC repository, so pipeline tests never touch the real ``data/``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def make_project(dest: Path, preset: str = "smoke", overrides: dict | None = None) -> Path:
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for name in ("mobilemoe", "scripts", "presets"):
        shutil.copytree(ROOT / name, dest / name, ignore=_IGNORE, symlinks=True)
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")  # scripts/py finds the interpreter here
    text = (ROOT / "presets" / f"{preset}.yaml").read_text()
    if overrides:
        raw = yaml.safe_load(text)
        for key, value in overrides.items():
            node = raw
            *parents, last = key.split(".")
            for p in parents:
                node = node[p]
            node[last] = value
        text = yaml.safe_dump(raw, sort_keys=False)
    (dest / "params.yaml").write_text(text)
    (dest / ".gitignore").write_text("/data/\n.venv\n")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    from dvc.repo import Repo

    Repo.init(str(dest)).close()
    return dest


def set_param(root: Path, key: str, value) -> None:
    """Edit one key of params.yaml (by YAML round trip)."""
    import yaml

    raw = yaml.safe_load((root / "params.yaml").read_text())
    node = raw
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

"""What the flow needs to run its steps elsewhere: per-step compute from params, and a code
package that carries the library.

* :class:`per_step_compute` reads ``compute.<step>`` of the run's Config and adds
  ``@resources`` + ``@kubernetes`` / ``@batch`` to that step only (``--with kubernetes``
  would send every step, ``start`` and the joins included); ``target: local`` adds nothing.
  At packaging time (on the launching machine) it also writes the launch record: the git
  commit, since a remote step has no ``.git``.
* :func:`code_package` is Metaflow's ``@package_sources`` with the project's files: the
  library, the device lab, the kernels' sources, ``params.yaml``, the presets and the DVC
  files the steps read at run time (never ``.venv/``, data or caches).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from metaflow import FlowMutator, package_sources  # type: ignore[attr-defined]

# Folders and files of the project that remote steps read (relative to the project root).
PACKAGED = (
    "mobilemoe",
    "device_lab",
    "mobilemoe_kernels",
    "scripts",
    "presets",
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    ".dvcignore",
    "pyproject.toml",
)
# Suffixes of what they read: sources, configs, the shipped corpus snapshot, kernel sources
# (built on first use where the image has no prebuilt library).
SUFFIXES = [".py", ".yaml", ".yml", ".json", ".gz", ".lock", ".toml", ".txt", ".cpp", ".h", ".sh"]
SUFFIXES.append(".dvcignore")
LAUNCH_FILE = "launch.json"  # mobilemoe.lineage.git_info reads it where there is no .git


def code_package(root: Path):
    sources = [(str(root / name), name) for name in PACKAGED if (root / name).exists()]
    return package_sources(sources, suffixes=SUFFIXES)


class per_step_compute(FlowMutator):
    """``compute.<step>`` of params as step decorators; the launch record in the package."""

    def init(self, root: str):
        self._root = root

    def pre_mutate(self, mutable_flow) -> None:
        from mobilemoe.config import parse_params
        from mobilemoe.config.compute import step_decorators

        raw = dict(mutable_flow.configs).get("config")
        if raw is None:
            return
        params = parse_params(json.loads(json.dumps(dict(raw))), "params.yaml")
        for name, step in mutable_flow.steps:
            for deco, kwargs in step_decorators(params.compute, name):
                step.add_decorator(deco, deco_kwargs=kwargs)

    def add_to_package(self):
        from metaflow.packaging_sys import ContentType

        from mobilemoe.lineage import launch_record

        folder = tempfile.mkdtemp(prefix="mobilemoe-launch-")
        path = os.path.join(folder, LAUNCH_FILE)
        Path(path).write_text(json.dumps(launch_record(Path(self._root))))
        yield (path, LAUNCH_FILE, ContentType.USER_CONTENT)
        # no suffix, so no source filter takes it: DVC's stage commands run it
        interpreter = Path(self._root) / "scripts" / "py"
        if interpreter.is_file():
            yield (str(interpreter), "scripts/py", ContentType.USER_CONTENT)

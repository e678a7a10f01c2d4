"""Interpreter start-up hook (installed as a .pth line by ``mobilemoe.setup_hooks``).

Must stay cheap and must never break an interpreter: it only installs a meta-path
finder that acts after two lm-eval modules are first imported:

* ``lm_eval.api.registry``: imports ``mobilemoe.eval.lm_model`` right after it, so our
  models (``mobilemoe``, ``mobilemoe-pte``) are registered with the stock ``lm_eval``;
* ``lm_eval.tasks``: a ``TaskManager`` made without an ``include_path`` (the stock
  ``lm_eval`` command without ``--include_path``) also indexes our offline task folder,
  so ``lm_eval --tasks arc_easy`` runs offline on the bundled data with the official
  prompts and metrics. ``MOBILEMOE_LM_EVAL_OFFLINE_TASKS=0`` turns that off (then the
  official tasks load their data from the hub).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_REGISTRY = "lm_eval.api.registry"
_TASKS = "lm_eval.tasks"
_REGISTRAR = "mobilemoe.eval.lm_model"


def _register_models(module) -> None:
    importlib.import_module(_REGISTRAR)


def _offline_tasks_by_default(module) -> None:
    import os

    manager = getattr(module, "TaskManager", None)
    if manager is None or getattr(manager, "_mobilemoe_wrapped", False):
        return
    real_init = manager.__init__

    def __init__(self, *args, **kwargs):
        given = kwargs.get("include_path", args[1] if len(args) > 1 else None)
        if given is None and os.environ.get("MOBILEMOE_LM_EVAL_OFFLINE_TASKS", "1") != "0":
            try:
                from mobilemoe.eval.suite import build_task_dir

                kwargs["include_path"] = str(build_task_dir())
                args = args[:1] + args[2:] if len(args) > 1 else args
            except Exception as e:  # never break lm-eval: fall back to its own tasks
                print(f"mobilemoe: offline tasks not added ({type(e).__name__}: {e})", file=sys.stderr)
        real_init(self, *args, **kwargs)

    manager.__init__ = __init__
    manager._mobilemoe_wrapped = True


_AFTER = {_REGISTRY: _register_models, _TASKS: _offline_tasks_by_default}


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.pending = dict(_AFTER)

    def find_spec(self, fullname, path, target=None):
        hook = self.pending.pop(fullname, None)
        if hook is None:
            return None
        # Resolve the real spec without this finder (no recursion); it stays installed
        # while other targets are pending.
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            if self.pending:
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            try:
                hook(module)
            except Exception as e:  # our eval module missing or broken: lm_eval still works
                print(f"mobilemoe: lm-eval hook for {fullname} failed ({type(e).__name__}: {e})",
                      file=sys.stderr)

        loader.exec_module = exec_module
        return spec


if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())

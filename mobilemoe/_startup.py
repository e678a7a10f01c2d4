"""Interpreter start-up hook (installed as a .pth line by ``mobilemoe.setup_hooks``).

lm-eval 0.4.13 has no plug-in discovery: the stock ``lm_eval`` command knows only the
models registered by modules it imported. This hook installs a meta-path finder that,
once ``lm_eval.api.registry`` has been imported, imports ``mobilemoe.eval.lm_model``, so
``--model mobilemoe`` / ``mobilemoe-pte`` resolve. It does nothing else: our offline
tasks are passed as lm-eval expects, ``--include_path "$(mobilemoe eval --task-dir)"``.

Must stay cheap (it runs in every interpreter of the venv) and must never break one: a
failing import of our module prints one line and lm-eval carries on.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_TARGET = "lm_eval.api.registry"
_REGISTRAR = "mobilemoe.eval.lm_model"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        # One shot: resolve the real spec without this finder (no recursion), then wrap
        # its loader so our models are registered right after lm-eval's registry exists.
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            try:
                # lm-eval's own models first (cheap: lazy placeholders): lm-eval adds them
                # only while its registry is empty, so ours alone would hide `--model hf`.
                importlib.import_module("lm_eval.models")
                importlib.import_module(_REGISTRAR)
            except Exception as e:  # our eval module missing or broken: lm_eval still works
                print(f"mobilemoe: lm-eval models not registered ({type(e).__name__}: {e})", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())

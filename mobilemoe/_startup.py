"""Interpreter start-up hook (installed as a .pth line by ``mobilemoe.setup_hooks``).

Must stay cheap and must never break an interpreter: it only installs a meta-path
finder that, when ``lm_eval.api.registry`` is first imported, imports
``mobilemoe.eval.lm_model`` right after it so our models are registered with the stock
``lm_eval`` command.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_TARGET = "lm_eval.api.registry"
_REGISTRAR = "mobilemoe.eval.lm_model"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; avoid recursion while resolving the real spec
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module):
            real_exec(module)
            try:
                importlib.import_module(_REGISTRAR)
            except Exception as e:  # our eval module missing or broken: lm_eval still works
                print(f"mobilemoe: lm-eval models not registered ({type(e).__name__}: {e})",
                      file=sys.stderr)

        loader.exec_module = exec_module
        return spec


if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())

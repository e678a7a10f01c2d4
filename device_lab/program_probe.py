"""Load an ExecuTorch program's header and method table in a child process first.

ExecuTorch's loader aborts the whole process (``terminate called ...``, exit 134) on some
corrupt or foreign files instead of raising, so no ``try`` in the caller can turn that
into a message. Every entry point that loads a ``.pte`` given by a user (the CLI, the
lm-eval model, the device-lab benchmark child, the flow's steps) asks this probe first:
it costs one short child process (~0.5 s) and turns any failure into one line.

    problem = probe_program("model.pte")   # None, or why it cannot be loaded
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

_PROBE = """
import sys
try:
    from executorch.extension.pybindings import _C as rt
except ImportError:
    from executorch.extension.pybindings import portable_lib as rt
names = rt._load_for_executorch(sys.argv[1]).method_names()
print("methods:", ",".join(sorted(names)))
"""


def probe_program(path: str | os.PathLike, timeout_s: float = 120.0) -> Optional[str]:
    """None when ``path`` loads as an ExecuTorch program; otherwise the reason, one line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if len(head) < 8 or head[4:6] != b"ET":  # the flatbuffer file identifier ("ET12", ...)
        return "not an ExecuTorch program (no ExecuTorch file identifier in its header)"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"loading it did not finish in {timeout_s:.0f} s"
    if proc.returncode == 0 and "methods:" in proc.stdout:
        return None
    code = proc.returncode
    how = (
        f"the runtime aborted ({signal.Signals(-code).name})"
        if code < 0 and -code in signal.valid_signals()
        else "the runtime refused it"
    )
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("[program.cpp") or "rror" in ln), "")
    detail = detail[:200]
    return f"not a loadable ExecuTorch program: {how}" + (f" ({detail})" if detail else "")

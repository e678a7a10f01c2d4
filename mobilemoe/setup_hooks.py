"""Install the interpreter start-up hook into the active environment's site-packages.

lm-eval 0.4.13 has no plug-in discovery: its stock ``lm_eval`` command only knows
models registered by modules it imported. A ``.pth`` line runs at interpreter start
and installs a lazy hook (``mobilemoe._startup``) that registers our lm-eval models
the moment ``lm_eval.api.registry`` is imported, and costs nothing otherwise.

    python -m mobilemoe.setup_hooks      # run by scripts/setup_venv.sh
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

PTH_NAME = "mobilemoe_startup.pth"
PTH_LINE = "import mobilemoe._startup\n"


def install() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    path = site / PTH_NAME
    path.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"installed start-up hook {install()}")

"""The kernels' NEON path on AArch64 (cross-compiled, run under qemu-user) and the x86 SIMD
paths, each against the portable path: `mobilemoe_kernels/cross_test.sh` builds and runs the
standalone self-test (`mobilemoe_kernels/tests_native/kernel_selftest.cpp`, no ExecuTorch)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "mobilemoe_kernels" / "cross_test.sh"
MISSING = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]


@pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)",
)
def test_cross_arm_selftest():
    res = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    # both AArch64 builds ran the neon path, the dot-product one with sdot, and all passed
    assert out.count("kernel_selftest: neon:") == 2, out[-6000:]
    assert "0 failed" in out and "cross_test.sh: all passed" in out, out[-6000:]
    sdot = [int(n) for n in re.findall(r"sdot instructions in the binary: (\d+)", out)]
    if sdot:  # objdump present: +dotprod build uses sdot, the armv8-a one does not
        assert sdot[0] > 0 and sdot[1] == 0, sdot

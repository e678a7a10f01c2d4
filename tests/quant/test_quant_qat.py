"""QAT for "8da4w": fake quantization equals the deployed (converted) numerics, training moves
the float weights, the router/norms/expert_bias stay float, and checkpoints reload into the
same converted model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilemoe.checkpoint import CheckpointError, save_checkpoint
from mobilemoe.config import load_preset
from mobilemoe.model import build_model
from mobilemoe.model.moe import MoEFeedForward, RoutedExperts, StaticExperts
from mobilemoe.quant import (QuantizationError, convert_qat, is_qat_prepared, load_for_inference,
                             prepare_qat, qat_spec)

QAT_META = {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}
# Our choice: QAT forward vs converted forward. Both compute the same INT4/INT8 values; the
# routed path sums experts in another order than the static path (float rounding ~1e-7),
# which can flip an INT8 rounding of a later activation now and then.
QAT_VS_CONVERTED_ATOL = 1e-4


@pytest.fixture(scope="module")
def params():
    return load_preset("smoke")


def _train(model, steps: int, lr: float = 1e-2, seed: int = 0) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, model.cfg.vocab_size, (4, 32), generator=gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained_qat(params):
    torch.manual_seed(0)
    model = build_model(params.model)
    float_before = copy.deepcopy(model)
    prepare_qat(model, params.qat)
    _train(model, 3)
    return model.eval(), float_before


def test_prepare_keeps_weights_names_and_tying(params):
    torch.manual_seed(0)
    model = build_model(params.model)
    keys = list(model.state_dict())
    params_before = [id(p) for p in model.parameters()]
    out = prepare_qat(model, params.qat)
    assert out is model and is_qat_prepared(model)
    assert list(model.state_dict()) == keys  # checkpoints stay plain float models
    assert [id(p) for p in model.parameters()] == params_before  # optimizer state still fits
    assert model.output.weight is model.tok_embeddings.weight
    assert prepare_qat(model, params.qat) is model  # idempotent


def test_what_is_and_is_not_fake_quantized(params):
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    model = prepare_qat(build_model(params.model), params.qat)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, FakeQuantizedLinear) for m in linears)
    assert isinstance(model.tok_embeddings, FakeQuantizedEmbedding)
    for experts in model.routed_experts():
        assert experts.weight_fake_quant is not None and experts.act_fake_quant is not None
    for router in model.routers():
        # The router is an F.linear on an fp32 parameter: no fake quantizer can reach it.
        assert type(router.weight) is nn.Parameter and router.weight.dtype == torch.float32
        assert not any(isinstance(m, FakeQuantizedLinear) for m in router.modules())
    # Norm weights and expert_bias are plain tensors used as they are.
    assert all(type(m.weight) is nn.Parameter for m in model.modules() if type(m).__name__ == "RMSNorm")


def test_routed_experts_fake_quant_equals_the_static_path(params):
    """The training path (token sort, per-expert matmuls) sees exactly the numbers the
    static experts (two nn.Linear, as exported) see under torchao's own fake quantization."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from mobilemoe.quant.qat import QATSpec, linear_config

    torch.manual_seed(1)
    ffn = MoEFeedForward(64, params.model.moe)
    for p in ffn.parameters():
        nn.init.normal_(p, 0, 0.2)
    static = copy.deepcopy(ffn)
    static.use_static_experts()
    quantize_(static, QATConfig(linear_config(QATSpec()), step="prepare"))
    routed = prepare_qat(ffn, QATSpec()).eval()
    static.eval()
    x = torch.randn(37, 64)
    with torch.no_grad():
        y_routed, y_static = routed(x), static(x)
    assert isinstance(routed.experts, RoutedExperts) and isinstance(static.experts, StaticExperts)
    assert torch.allclose(y_routed, y_static, atol=1e-5, rtol=0)
    # ... and that is not the float result: fake quantization is really on.
    with torch.no_grad():
        plain = MoEFeedForward(64, params.model.moe)
        plain.load_state_dict(ffn.state_dict())
        assert (plain(x) - y_routed).abs().max() > 1e-3


def test_qat_forward_matches_converted_model(params, trained_qat):
    model, _ = trained_qat
    converted = convert_qat(copy.deepcopy(model), params.qat)
    tokens = torch.randint(0, params.model.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_qat, y_conv = model(tokens), converted(tokens)
    assert (y_qat - y_conv).abs().max().item() <= QAT_VS_CONVERTED_ATOL
    # Converted: static experts, torchao INT4 weights in [-8, 7] with groups of 32,
    # INT8 dynamic activations; router and norms float.
    from torchao.quantization import IntxUnpackedToInt8Tensor

    experts = converted.layers[0].ffn.experts
    assert isinstance(experts, StaticExperts)
    for lin in (experts.gate_up, experts.down, converted.output, converted.layers[0].attn.wq):
        w = lin.weight
        assert isinstance(w, IntxUnpackedToInt8Tensor) and w.target_dtype == torch.int4
        assert w.block_size == (1, 32) and w.activation_quantization is not None
        assert -8 <= int(w.qdata.min()) and int(w.qdata.max()) <= 7
    assert isinstance(converted.tok_embeddings.weight, IntxUnpackedToInt8Tensor)
    assert converted.tok_embeddings.weight.activation_quantization is None  # weight-only
    assert type(converted.layers[0].ffn.router.weight) is nn.Parameter
    assert type(converted.norm.weight) is nn.Parameter


def test_qat_steps_train_the_float_weights_through_fake_quant(params, trained_qat):
    model, before = trained_qat
    after = dict(model.named_parameters())
    moved = {n: (after[n] - p).abs().max().item() for n, p in before.named_parameters()}
    # Every kind of weight moved: experts, attention, embedding, router.
    for name in ("layers.0.ffn.experts.w13", "layers.0.ffn.experts.w2", "layers.0.attn.wq.weight",
                 "tok_embeddings.weight", "layers.0.ffn.router.weight"):
        assert moved[name] > 1e-4, name
    # Gradients reach the float weights through the fake quantizers (straight-through).
    model.train()
    x = torch.randint(0, params.model.vocab_size, (2, 16))
    F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    experts = model.layers[0].ffn.experts
    assert experts.w13.grad.abs().sum() > 0 and experts.w2.grad.abs().sum() > 0
    assert model.layers[0].ffn.router.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_tied_embedding_and_lm_head_see_the_same_int4_values(params, trained_qat):
    model, _ = trained_qat
    w = model.tok_embeddings.weight.detach()
    as_embedding = model.tok_embeddings.weight_fake_quantizer(w)
    as_head = model.output.weight_fake_quantizer(w)
    assert torch.equal(as_embedding, as_head)
    converted = convert_qat(copy.deepcopy(model), params.qat)
    emb = converted.tok_embeddings.weight.dequantize()
    head = converted.output.weight.dequantize()
    assert torch.equal(emb, head) and torch.equal(emb, as_embedding)


def test_checkpoint_reloads_into_the_same_converted_model(params, trained_qat, tmp_path, tokenizer_file):
    model, _ = trained_qat
    save_checkpoint(tmp_path / "qat", model, {"stage": "qat", "step": 3, "qat": QAT_META},
                    tokenizer=tokenizer_file)
    a, cfg = load_for_inference(tmp_path / "qat")
    b, _ = load_for_inference(tmp_path / "qat")
    assert cfg["stage"] == "qat" and isinstance(a.layers[0].ffn.experts, StaticExperts)
    tokens = torch.randint(0, params.model.vocab_size, (1, 40))
    with torch.no_grad():
        ref = convert_qat(copy.deepcopy(model), params.qat)(tokens)
        assert torch.equal(a(tokens), b(tokens))  # deterministic
        assert (a(tokens) - ref).abs().max() <= 1e-6
        fp, _ = load_for_inference(tmp_path / "qat", quantized=False)
        assert isinstance(fp.layers[0].ffn.experts, RoutedExperts)
        assert (fp(tokens) - ref).abs().max() > 1e-3  # float weights without quantization


def test_float_checkpoint_loads_as_float(smoke_checkpoint):
    model, cfg = load_for_inference(smoke_checkpoint)
    assert cfg["qat"] is None and not is_qat_prepared(model)
    assert isinstance(model.layers[0].ffn.experts, RoutedExperts) and not model.training


def test_bad_qat_settings_are_named(params, tmp_path, tokenizer_file):
    with pytest.raises(QuantizationError, match="qat.scheme"):
        qat_spec({"scheme": "int8", "group_size": 32, "quantize_embedding": True})
    with pytest.raises(QuantizationError, match="qat.group_size"):
        qat_spec({"scheme": "8da4w", "group_size": 0})
    with pytest.raises(QuantizationError, match="qat.bits"):
        qat_spec({"scheme": "8da4w", "bits": 4})
    model = build_model(params.model)
    with pytest.raises(QuantizationError, match="not a multiple of qat.group_size=48"):
        prepare_qat(model, {"scheme": "8da4w", "group_size": 48, "quantize_embedding": True})
    save_checkpoint(tmp_path / "bad", model, {"stage": "qat", "qat": {"scheme": "fp8"}},
                    tokenizer=tokenizer_file)
    with pytest.raises(CheckpointError, match=r"config.json: qat.scheme: 'fp8'"):
        load_for_inference(tmp_path / "bad")

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
from mobilemoe.model.moe import MoEFeedForward, RoutedExperts
from mobilemoe.quant import (
    QuantizationError,
    convert_qat,
    is_qat_prepared,
    load_for_inference,
    prepare_qat,
    qat_spec,
)
from mobilemoe.quant.experts import QuantizedExperts
from mobilemoe.quant.qat import QATSpec

QAT_META = {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}
# QAT forward vs converted eager forward: the same computation (the routed experts' fake
# quantization is the kernel's arithmetic; the linears are torchao's fake quantization
# and its converted form). Measured: bit-identical on the smoke and tiny models; the bound
# leaves room for float summation order only (the old all-experts form differed by up
# to 0.053 logits on a trained tiny checkpoint: per-token grouping of the gated hidden).
QAT_VS_CONVERTED_ATOL = 1e-5


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
        assert experts.fake_quant is not None
    for router in model.routers():
        # The router is an F.linear on an fp32 parameter: no fake quantizer can reach it.
        assert type(router.weight) is nn.Parameter and router.weight.dtype == torch.float32
        assert not any(isinstance(m, FakeQuantizedLinear) for m in router.modules())
    # Norm weights and expert_bias are plain tensors used as they are.
    assert all(type(m.weight) is nn.Parameter for m in model.modules() if type(m).__name__ == "RMSNorm")


def test_routed_experts_fake_quant_equals_the_kernel(params):
    """The training path (token sort, per-expert matmuls, fake quantization) computes what
    the deployed kernel computes on the packed INT4 weights (its torch op: the reference)."""
    torch.manual_seed(1)
    ffn = MoEFeedForward(64, params.model.moe)
    for p in ffn.parameters():
        nn.init.normal_(p, 0, 0.2)
    plain = copy.deepcopy(ffn).eval()
    routed = prepare_qat(ffn, QATSpec()).eval()
    converted = copy.deepcopy(routed)
    converted.experts = QuantizedExperts(routed.experts.w13, routed.experts.w2)
    x = torch.randn(37, 64)
    with torch.no_grad():
        y_routed, y_kernel = routed(x), converted(x)
    assert isinstance(routed.experts, RoutedExperts)
    assert (y_routed - y_kernel).abs().max() <= 1e-5
    # ... and that is not the float result: fake quantization is really on.
    with torch.no_grad():
        assert (plain(x) - y_routed).abs().max() > 1e-3


def test_expert_fake_quant_passes_gradients_straight_through(params):
    torch.manual_seed(2)
    ffn = prepare_qat(MoEFeedForward(64, params.model.moe), QATSpec()).train()
    for p in ffn.parameters():
        nn.init.normal_(p, 0, 0.2)
    x = torch.randn(16, 64, requires_grad=True)
    ffn(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert ffn.experts.w13.grad.abs().sum() > 0 and ffn.experts.w2.grad.abs().sum() > 0


def test_qat_forward_matches_converted_model(params, trained_qat):
    model, _ = trained_qat
    converted = convert_qat(copy.deepcopy(model), params.qat)
    tokens = torch.randint(0, params.model.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_qat, y_conv = model(tokens), converted(tokens)
    assert (y_qat - y_conv).abs().max().item() <= QAT_VS_CONVERTED_ATOL
    # Converted: the experts packed for the kernel (INT4 g32, fp16 scales); the other
    # linears torchao INT4 weights in [-8, 7] with groups of 32, INT8 dynamic activations;
    # router and norms float.
    from torchao.quantization import IntxUnpackedToInt8Tensor

    from mobilemoe_kernels.pack import unpack_int4

    experts = converted.layers[0].ffn.experts
    assert isinstance(experts, QuantizedExperts)
    q13, s13 = unpack_int4(experts.w13_packed, experts.w13_scales)
    assert q13.shape == model.layers[0].ffn.experts.w13.shape and s13.dtype == torch.float16
    assert -8 <= int(q13.min()) and int(q13.max()) <= 7 and int(q13.max()) == 7
    for lin in (converted.layers[0].ffn.shared.gate_up, converted.output, converted.layers[0].attn.wq):
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
    for name in (
        "layers.0.ffn.experts.w13",
        "layers.0.ffn.experts.w2",
        "layers.0.attn.wq.weight",
        "tok_embeddings.weight",
        "layers.0.ffn.router.weight",
    ):
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
    save_checkpoint(
        tmp_path / "qat", model, {"stage": "qat", "step": 3, "qat": QAT_META}, tokenizer=tokenizer_file
    )
    a, cfg = load_for_inference(tmp_path / "qat")
    b, _ = load_for_inference(tmp_path / "qat")
    assert cfg["stage"] == "qat" and isinstance(a.layers[0].ffn.experts, QuantizedExperts)
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
    with pytest.raises(QuantizationError, match=r"experts use groups of 32; set qat.group_size: 32"):
        prepare_qat(build_model(params.model), {"scheme": "8da4w", "group_size": 16})
    import dataclasses

    odd = dataclasses.replace(
        params.model, moe=dataclasses.replace(params.model.moe, expert_hidden=40, n_shared_experts=0)
    )
    with pytest.raises(QuantizationError, match=r"expert hidden 40 must be multiples of 32"):
        prepare_qat(build_model(odd), QATSpec())
    save_checkpoint(
        tmp_path / "bad", model, {"stage": "qat", "qat": {"scheme": "fp8"}}, tokenizer=tokenizer_file
    )
    with pytest.raises(CheckpointError, match=r"config.json: qat.scheme: 'fp8'"):
        load_for_inference(tmp_path / "bad")

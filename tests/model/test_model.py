"""The MobileMoE decoder: masking, KV cache, routers, balancing, the two MoE paths."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mobilemoe.config import load_preset
from mobilemoe.config.model import ModelConfig, MoEConfig
from mobilemoe.model import build_model
from mobilemoe.model.moe import Router, route


def small(**moe_kw) -> ModelConfig:
    moe = dict(
        n_routed_experts=8,
        expert_hidden=32,
        top_k=2,
        n_shared_experts=1,
        shared_hidden=32,
        route_scale=2.5,
        bias_update_rate=0.01,
    )
    moe.update(moe_kw)
    return ModelConfig(
        name="t",
        vocab_size=300,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        moe=MoEConfig(**moe),
    )


CONFIGS = {
    "moe-sigmoid": small(),
    "moe-softmax": small(
        router="softmax",
        renormalize=False,
        route_scale=1.0,
        bias_update_rate=0.0,
        aux_loss_weight=0.01,
        z_loss_weight=0.001,
        n_shared_experts=0,
    ),
    "moe-first-dense": small(n_dense_layers=1),
    "dense-sliding": ModelConfig(
        name="d",
        vocab_size=300,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=1,
        max_seq_len=64,
        sliding_window=8,
        global_every=4,
        tie_embeddings=False,
        ffn_hidden=96,
        moe=None,
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_causal_masking(name, seed):
    model = build_model(CONFIGS[name]).eval()
    x = torch.randint(6, 300, (2, 24))
    y = x.clone()
    y[:, 15:] = torch.randint(6, 300, (2, 9))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-3)


def test_sliding_window_limits_reach(seed):
    cfg = CONFIGS["dense-sliding"]
    cfg = copy.deepcopy(cfg)
    cfg.global_every = 10**6  # every layer local: position t sees only (t-8, t]
    cfg.n_layers = 1
    model = build_model(cfg).eval()
    x = torch.randint(6, 300, (1, 30))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 300
    with torch.no_grad():
        a, b = model(x), model(y)
    assert not torch.allclose(a[0, :8], b[0, :8], atol=1e-4)  # inside the window of token 0
    assert torch.allclose(a[0, 8:], b[0, 8:], atol=1e-6)  # beyond it (one layer: no relay)


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_decode_equals_full_forward(name, seed):
    model = build_model(CONFIGS[name]).eval()
    x = torch.randint(6, 300, (1, 40))
    with torch.no_grad():
        full = model(x)
        model.setup_cache(1, 64)
        chunks = [model(x[:, :17], torch.arange(17))]
        for t in range(17, 40):
            chunks.append(model(x[:, t : t + 1], torch.tensor([t])))
        assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)
        # A new prompt from position 0 overwrites the cache: no reset needed.
        x2 = torch.randint(6, 300, (1, 12))
        assert torch.allclose(model(x2, torch.arange(12)), model.__class__.forward(model, x2), atol=1e-5)


def test_padding_mask_matches_unpadded(seed):
    model = build_model(CONFIGS["moe-sigmoid"]).eval()
    x = torch.randint(6, 300, (1, 10))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], 1)  # left padding
    valid = torch.tensor([[False] * 5 + [True] * 10])
    with torch.no_grad():
        ref = model(x)
        # Positions count from the first real token, as a padded batch would do.
        out = model(padded, key_valid=valid)
    # RoPE is relative, so shifting every real token by 5 positions leaves scores unchanged.
    assert torch.allclose(out[:, 5:], ref, atol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("block", [4, 1000, None])  # eval's query blocks, one block, plain SDPA
def test_packed_prefix_tree_row_equals_separate_forwards(name, block, seed, monkeypatch):
    """Three sequences in one row as a prefix tree (b shares a's first 20 tokens; c is a
    separate tree), at per-token positions with an ancestor mask, plus a padded row: each
    token gets the output of its own sequence's plain causal forward, through the model's
    own masked attention and through evaluation's query-block attention."""
    import mobilemoe.eval.forward as eval_forward

    if block is None:

        def forward(model, tokens, positions, mask):
            return model(tokens, positions=positions, attn_mask=mask)
    else:
        monkeypatch.setattr(eval_forward, "PACKED_QUERY_BLOCK", block)
        forward = eval_forward.packed_forward
    model = build_model(CONFIGS[name]).eval()
    a = torch.randint(6, 300, (30,))
    b = torch.cat([a[:20], torch.randint(6, 300, (9,))])
    c = torch.randint(6, 300, (12,))
    T = 30 + 9 + 12 + 3  # three pads at the end
    tokens = torch.zeros(2, T, dtype=torch.long)
    tokens[0, :51] = torch.cat([a, b[20:], c])
    tokens[1, :12] = c
    positions = torch.zeros(2, T, dtype=torch.long)
    positions[0, :51] = torch.cat([torch.arange(30), torch.arange(20, 29), torch.arange(12)])
    positions[1, :12] = torch.arange(12)
    mask = torch.eye(T, dtype=torch.bool).repeat(2, 1, 1)
    mask[0, :30, :30] = torch.ones(30, 30).tril().bool()  # a: causal
    mask[0, 30:39, :20] = True  # b: a's prefix ...
    mask[0, 30:39, 30:39] = torch.ones(9, 9).tril().bool()  # ... then its own
    mask[0, 39:51, 39:51] = torch.ones(12, 12).tril().bool()  # c: its own tree
    mask[1, :12, :12] = torch.ones(12, 12).tril().bool()
    with torch.no_grad():
        out = forward(model, tokens, positions, mask)
        ref_a, ref_b, ref_c = (model(s.unsqueeze(0))[0] for s in (a, b, c))
    assert torch.allclose(out[0, :30], ref_a, atol=1e-5)
    assert torch.allclose(out[0, 30:39], ref_b[20:], atol=1e-5)
    assert torch.allclose(out[0, 39:51], ref_c, atol=1e-5)
    assert torch.allclose(out[1, :12], ref_c, atol=1e-5)
    assert torch.isfinite(out).all()  # padding rows attend to themselves only
    # A mask with keys above the diagonal (c packed BEFORE a here) runs without blocks.
    mask2 = mask[:1].clone()
    perm = torch.cat([torch.arange(39, 51), torch.arange(0, 39), torch.arange(51, T)])
    mask2 = mask2[:, perm][:, :, perm]
    with torch.no_grad():
        out2 = forward(model, tokens[:1, perm], positions[:1, perm], mask2)
    assert torch.allclose(out2[0, :12], ref_c, atol=1e-5)
    assert torch.allclose(out2[0, 12:42], ref_a, atol=1e-5)


def test_packed_rows_reject_mismatched_inputs(seed):
    model = build_model(CONFIGS["moe-sigmoid"]).eval()
    x = torch.randint(6, 300, (1, 5))
    pos = torch.arange(5).unsqueeze(0)
    with pytest.raises(ValueError, match="attn_mask"):
        model(x, positions=pos, attn_mask=torch.ones(1, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="both positions and attn_mask"):
        model(x, positions=pos)
    with pytest.raises(ValueError, match="attend applies to packed rows"):
        model(x, attend=lambda *a, **k: None)


def _reference_routing(cfg: MoEConfig, weight, bias, x):
    """Plain per-token routing (no batching tricks), as docs/paper.md#routing describes it."""
    out_idx, out_w = [], []
    for t in range(x.shape[0]):
        logits = [float(weight[e].detach() @ x[t].double()) for e in range(cfg.n_routed_experts)]
        if cfg.router == "sigmoid":
            scores = [1 / (1 + torch.exp(torch.tensor(-v, dtype=torch.float64)).item()) for v in logits]
            order = sorted(range(len(scores)), key=lambda e: -(scores[e] + float(bias[e])))
        else:
            m = max(logits)
            z = sum(torch.exp(torch.tensor(v - m, dtype=torch.float64)).item() for v in logits)
            scores = [torch.exp(torch.tensor(v - m, dtype=torch.float64)).item() / z for v in logits]
            order = sorted(range(len(scores)), key=lambda e: -scores[e])
        picked = order[: cfg.top_k]
        w = [scores[e] for e in picked]
        if cfg.renormalize:
            w = [v / sum(w) for v in w]
        out_idx.append(picked)
        out_w.append([v * cfg.route_scale for v in w])
    return out_idx, out_w


@pytest.mark.parametrize("name", ["moe-sigmoid", "moe-softmax"])
def test_router_matches_per_token_reference(name, seed):
    cfg = CONFIGS[name].moe
    router = Router(64, cfg)
    torch.nn.init.normal_(router.weight, std=0.5)
    router.expert_bias.copy_(torch.randn(cfg.n_routed_experts) * 0.3)
    x = torch.randn(20, 64)
    r = router(x)
    ref_idx, ref_w = _reference_routing(cfg, router.weight.double(), router.expert_bias, x)
    for t in range(20):
        got = dict(zip(r.topk_idx_TK[t].tolist(), r.topk_weight_TK[t].tolist()))
        want = dict(zip(ref_idx[t], ref_w[t]))
        assert set(got) == set(want)
        for e in want:
            assert got[e] == pytest.approx(want[e], rel=1e-5)
    assert r.logits_TE.dtype == torch.float32


def test_router_runs_in_fp32_under_bf16():
    cfg = CONFIGS["moe-sigmoid"].moe
    router = Router(64, cfg)
    torch.nn.init.normal_(router.weight, std=0.5)
    x = torch.randn(10, 64).bfloat16()
    r = router(x)
    assert router.weight.dtype == torch.float32 and r.logits_TE.dtype == torch.float32


def test_bias_balancing_moves_skewed_load_toward_balance(seed):
    cfg = small(bias_update_rate=0.01).moe
    router = Router(64, cfg).train()
    torch.nn.init.normal_(router.weight, std=0.1)
    with torch.no_grad():
        router.weight[0] += 0.6  # expert 0 wins for tokens along a common direction
    x = torch.randn(512, 64) * 0.2 + torch.ones(64) * 0.3

    def imbalance():
        load = torch.bincount(router(x).topk_idx_TK.reshape(-1), minlength=8).float()
        return (load.max() / load.mean()).item()

    router.load_accum.zero_()
    before = imbalance()
    for _ in range(300):
        router(x)
        router.update_bias()
    after = imbalance()
    assert before > 2.0
    assert after < 0.5 * before and after < 1.6, (before, after)
    # The bias only picks experts: combine weights come from the scores alone.
    r = router(x)
    scores = torch.sigmoid(F.linear(x, router.weight)).gather(1, r.topk_idx_TK)
    expect = scores / scores.sum(-1, keepdim=True) * cfg.route_scale
    assert torch.allclose(r.topk_weight_TK, expect, atol=1e-6)


def test_softmax_router_losses(seed):
    cfg = CONFIGS["moe-softmax"].moe
    router = Router(64, cfg).train()
    torch.nn.init.normal_(router.weight, std=0.5)
    x = torch.randn(32, 64)
    r = router(x)
    probs = torch.softmax(r.logits_TE, -1)
    f = torch.bincount(r.topk_idx_TK.reshape(-1), minlength=8).float() / (32 * cfg.top_k)
    lb = cfg.aux_loss_weight * 8 * (f * probs.mean(0)).sum()
    z = cfg.z_loss_weight * torch.logsumexp(r.logits_TE, -1).square().mean()
    assert router.aux_loss.item() == pytest.approx((lb + z).item(), rel=1e-5)


def _naive_experts(experts, x_TD, routing):
    """Token by token, chosen expert by chosen expert: out = sum_k g_k * W2 (silu(g) * u)."""
    H = experts.hidden
    rows = []
    for t in range(x_TD.shape[0]):
        acc = torch.zeros_like(x_TD[t])
        for e, g in zip(routing.topk_idx_TK[t].tolist(), routing.topk_weight_TK[t]):
            gu = experts.w13[e] @ x_TD[t]
            acc = acc + g * (experts.w2[e] @ (F.silu(gu[:H]) * gu[H:]))
        rows.append(acc)
    return torch.stack(rows)


def test_routed_experts_equal_the_naive_sum_and_the_kernel_op(seed):
    import mobilemoe_kernels.ops  # noqa: F401

    model = build_model(load_preset("tiny").model).eval()
    layer = model.layers[0].ffn
    h = torch.randn(50, 128)
    with torch.no_grad():
        routing = layer.router(h)
        got = layer.experts(h, routing)
        naive = _naive_experts(layer.experts, h, routing)
        kernel = torch.ops.mmoe.moe_ffn_f32(
            h, routing.topk_idx_TK, routing.topk_weight_TK, layer.experts.w13, layer.experts.w2
        )
    assert (got - naive).abs().max().item() < 1e-5
    assert (got - kernel).abs().max().item() < 1e-5


def test_one_routing_function(seed):
    """Router is route() on its logits: bias picks, gates are the renormalised scores x scale."""
    cfg = CONFIGS["moe-sigmoid"].moe
    router = Router(64, cfg).eval()
    torch.nn.init.normal_(router.weight, std=0.5)
    router.expert_bias.copy_(torch.linspace(-0.3, 0.3, router.n_experts))
    x = torch.randn(20, 64)
    r = router(x)
    idx, w, scores = route(r.logits_TE, router.expert_bias, cfg)
    assert torch.equal(idx, r.topk_idx_TK) and torch.equal(w, r.topk_weight_TK)
    # The bias changed some picks but not the gates' source: gates are sigmoid scores.
    plain_idx = torch.topk(torch.sigmoid(r.logits_TE), cfg.top_k, -1).indices
    assert not torch.equal(plain_idx.sort(-1).values, idx.sort(-1).values)
    g = torch.sigmoid(r.logits_TE).gather(-1, idx)
    want = g / g.sum(-1, keepdim=True) * cfg.route_scale if cfg.renormalize else g * cfg.route_scale
    assert torch.allclose(w, want, atol=1e-6)


def test_every_expert_with_tokens_gets_gradients(seed):
    model = build_model(CONFIGS["moe-sigmoid"]).train()
    x = torch.randint(6, 300, (2, 32))
    logits = model(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for router, experts in zip(model.routers(), model.routed_experts()):
        used = router.last_load > 0
        g13 = experts.w13.grad.flatten(1).abs().sum(1)
        g2 = experts.w2.grad.flatten(1).abs().sum(1)
        assert (g13[used] > 0).all() and (g2[used] > 0).all()
        assert (g13[~used] == 0).all()
        assert router.weight.grad.abs().sum() > 0


def test_training_path_gradients_match_the_naive_sum(seed):
    model = build_model(CONFIGS["moe-sigmoid"]).train()
    layer = model.layers[0].ffn
    x = torch.randn(24, 64)
    with torch.no_grad():
        routing = layer.router(x)
    upstream = torch.randn(24, 64)
    (layer.experts(x, routing) * upstream).sum().backward()
    g13, g2 = layer.experts.w13.grad.clone(), layer.experts.w2.grad.clone()
    layer.experts.zero_grad()
    (_naive_experts(layer.experts, x, routing) * upstream).sum().backward()
    assert torch.allclose(layer.experts.w13.grad, g13, atol=1e-5)
    assert torch.allclose(layer.experts.w2.grad, g2, atol=1e-5)


def test_generation_api_needs_cache():
    model = build_model(CONFIGS["moe-sigmoid"])
    with pytest.raises(RuntimeError, match="setup_cache"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.arange(3))


@pytest.mark.parametrize("name", ["moe-first-dense", "dense-sliding"])
def test_weights_do_not_depend_on_the_order_they_are_made_in(name):
    """What FSDP ranks do (one block at a time from "meta", the root last) makes the
    weights one process makes at once; blocks made earlier are left alone."""
    cfg = CONFIGS[name]
    torch.manual_seed(7)
    whole = build_model(cfg)
    torch.manual_seed(7)
    parts = build_model(cfg, device="meta")
    assert all(p.is_meta for p in parts.parameters())
    for i in reversed(range(cfg.n_layers)):
        parts.materialize("cpu", prefix=f"layers.{i}.")
        assert not any(p.is_meta for p in parts.layers[i].parameters())
        assert parts.tok_embeddings.weight.is_meta
    norm = parts.layers[0].attn_norm.weight
    with torch.no_grad():
        norm.fill_(3.0)  # as if trained (or sharded): the root's turn must not reset it
    parts.materialize("cpu")  # the rest: embedding, final norm, head, buffers
    assert torch.equal(norm, torch.full_like(norm, 3.0))
    with torch.no_grad():
        norm.fill_(1.0)
    a, b = whole.state_dict(), parts.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (parts.output.weight is parts.tok_embeddings.weight) == cfg.tie_embeddings
    assert torch.equal(parts.inv_freq, whole.inv_freq)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    assert torch.equal(parts(tokens), whole(tokens))
    # a second model drawn from the same generator is a different initialisation
    assert not torch.equal(build_model(cfg).tok_embeddings.weight, whole.tok_embeddings.weight)

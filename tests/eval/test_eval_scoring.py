"""Log-likelihoods of the ``mobilemoe`` lm-eval model against direct forward passes."""

from __future__ import annotations

import random

import pytest
import torch
from eval_helpers import instances

from mobilemoe.eval.scoring import continuation_windows
from mobilemoe.tokens import BOS_ID, PAD_ID

PAIRS = [
    ("The capital of France is", " Paris"),
    ("Question: Which technology was developed most recently?\nAnswer:", " cellular telephone"),
    ("def add(a, b):\n   ", " return a + b"),
    ("Answer: ", "yes"),  # trailing space moves into the continuation
    ("", "An empty context conditions on the BOS token."),
]


def direct_logprob(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens) from one plain forward pass, no harness code."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces and context:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = tok.encode(context, add_special_tokens=False).ids
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    cont = whole[len(ctx) :]
    seq = [BOS_ID] + whole
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]])).float(), -1)[0]
    first = len(seq) - 1 - len(cont)  # position whose logits predict the first cont token
    return sum(logp[first + j, t].item() for j, t in enumerate(cont))


def test_loglikelihood_equals_sum_of_direct_logprobs(smoke_lm):
    got = smoke_lm.loglikelihood(instances("loglikelihood", PAIRS))
    for (ctx, cont), (ll, greedy) in zip(PAIRS, got):
        want = direct_logprob(smoke_lm.model, smoke_lm.tok, ctx, cont)
        assert ll == pytest.approx(want, abs=1e-4), (ctx, cont)
        assert ll < 0 and isinstance(greedy, bool)


def _random_pairs(tok, n: int, seed: int = 0):
    from pydoc_data.topics import topics

    words = " ".join(list(topics.values())[:30]).split()
    rnd = random.Random(seed)
    pairs = []
    for _ in range(n):
        i = rnd.randrange(len(words) - 200)
        ctx = " ".join(words[i : i + rnd.randint(1, 120)])
        cont = " " + " ".join(words[i + 130 : i + 130 + rnd.randint(1, 12)])
        pairs.append((ctx, cont))
    # Shared contexts with one-token answers share one row (as MMLU's A/B/C/D) ...
    pairs += [("Question: pick one.\nAnswer:", f" {c}") for c in "ABCD"]
    # ... and with answers of several tokens run the context once (the KV-cache path).
    for k in range(5):
        ctx = " ".join(words[k * 50 : k * 50 + 10 + 7 * k])
        pairs += [(ctx, " " + " ".join(words[900 + 13 * j : 900 + 13 * j + j + 1])) for j in range(4)]
    return pairs


def test_batched_equals_unbatched(smoke_lm, monkeypatch):
    pairs = _random_pairs(smoke_lm.tok, 40)
    reqs = instances("loglikelihood", pairs)
    fed = []  # real (non-pad) tokens of every packed forward
    real = smoke_lm._logits_tree

    def counting(tokens, positions, mask, pick):
        fed.append(int((tokens != PAD_ID).sum()))
        return real(tokens, positions, mask, pick)

    monkeypatch.setattr(smoke_lm, "_logits_tree", counting)
    old = smoke_lm.batch_size
    try:
        smoke_lm.batch_size = 1  # the reference: one plain forward per request
        single = smoke_lm.loglikelihood(reqs)
        assert not fed
        smoke_lm.batch_size = 16
        batched = smoke_lm.loglikelihood(reqs)
    finally:
        smoke_lm.batch_size = old
    inputs = set()
    for ctx, cont in pairs:
        c, x = smoke_lm._encode_pair_or_empty(ctx, cont)
        inputs |= {w.inp for w in continuation_windows(c, x, smoke_lm.max_length)[0]}
    prefixes = {inp[:k] for inp in inputs for k in range(1, len(inp) + 1)}
    # Every distinct prefix is computed once, give or take the prefixes that a row
    # boundary cuts (the first input of a row brings its own copy).
    assert len(prefixes) <= sum(fed) < len(prefixes) + len(fed) * smoke_lm.max_length // 2
    assert sum(fed) < sum(len(i) for i in inputs) - 5 * 10  # the five contexts, once each
    diffs = [abs(a[0] - b[0]) for a, b in zip(single, batched)]
    assert max(diffs) < 1e-5
    assert [a[1] for a in single] == [b[1] for b in batched]


def _random_tokens(rnd, n: int) -> list[tuple[int, ...]]:
    """Token tuples with shared prefixes (k answers after a context), duplicates and
    prefixes of each other: what lm-eval's requests look like to the packer."""
    out = []
    for _ in range(n):
        ctx = [1] + [rnd.randrange(6, 50) for _ in range(rnd.randint(0, 40))]
        for _ in range(rnd.randint(1, 4)):
            out.append(tuple(ctx + [rnd.randrange(6, 50) for _ in range(rnd.randint(1, 12))]))
    out.append(out[0][:3])  # a prefix of another input
    return list(set(out))


@pytest.mark.parametrize("capacity", [60, 1000])
def test_prefix_tree_rows_hold_every_input_with_its_ancestors(capacity):
    from mobilemoe.eval.scoring import build_packed, pack_prefix_trees

    rnd = random.Random(capacity)
    inputs = _random_tokens(rnd, 30)
    rows = pack_prefix_trees(inputs, capacity)
    packed = build_packed(rows)
    assert sorted(packed.inputs) == sorted(inputs)
    tokens, positions, mask = packed.tokens, packed.positions, packed.mask
    for inp, (r, path) in zip(packed.inputs, packed.paths):
        assert tokens[r, path].tolist() == list(inp)
        assert positions[r, path].tolist() == list(range(len(inp)))
        for j, node in enumerate(path):  # attends to exactly its ancestors and itself
            assert set(torch.nonzero(mask[r, node]).flatten().tolist()) == set(path[: j + 1])
    assert not mask.triu(1).any()  # ancestors come first: the model's blocked attention
    assert all(size <= capacity for size in packed.sizes)
    assert packed.sizes == [int((tokens[r] != PAD_ID).sum()) for r in range(len(rows))]
    prefixes = {inp[:k] for inp in inputs for k in range(1, len(inp) + 1)}
    if capacity == 1000:  # one row: a real prefix tree, every distinct prefix once
        assert len(rows) == 1 and packed.sizes == [len(prefixes)]
    else:
        assert len(rows) > 1 and sum(packed.sizes) < sum(map(len, inputs))


def test_long_context_truncated_from_the_left_and_counted(smoke_lm):
    from mobilemoe.eval.lm_model import MobileMoELM

    lm = MobileMoELM(checkpoint=str(smoke_lm.checkpoint), batch_size=4, device="cpu")
    W = lm.max_length  # 128 for the smoke model
    ctx_text = " ".join(f"word{i}" for i in range(400))
    cont_text = " finally the end"
    ((ll, _),) = lm.loglikelihood(instances("loglikelihood", [(ctx_text, cont_text)], "long"))
    ctx = [BOS_ID] + lm.tok.encode(ctx_text, add_special_tokens=False).ids
    whole = [BOS_ID] + lm.tok.encode(ctx_text + cont_text, add_special_tokens=False).ids
    cont = whole[len(ctx) :]
    window = whole[-(W + 1) :]  # lm-eval: keep the last max_length + 1 tokens
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([window[:-1]])).float(), -1)[0]
    want = sum(logp[W - len(cont) + j, t].item() for j, t in enumerate(cont))
    assert ll == pytest.approx(want, abs=1e-4)
    assert lm.stats["truncated"]["long"] == 1 and lm.stats["requests"]["long"] == 1


@pytest.mark.parametrize("n_ctx,n_cont", [(1, 1), (5, 128), (300, 10), (3, 129), (40, 400)])
def test_continuation_windows_score_each_token_once_with_contiguous_context(n_ctx, n_cont):
    W = 128
    ctx, cont = list(range(1000, 1000 + n_ctx)), list(range(5000, 5000 + n_cont))
    seq = ctx + cont
    windows, truncated = continuation_windows(ctx, cont, W)
    assert [t for w in windows for t in w.targets] == cont
    assert truncated == (n_ctx + n_cont > W + 1)
    end = n_ctx
    for w in windows:
        assert 1 <= len(w.inp) <= W and len(w.targets) <= len(w.inp)
        start, end = end, end + len(w.targets)
        # input followed by the last target is one contiguous slice ending at the targets
        full = list(w.inp) + [w.targets[-1]]
        assert seq[end - len(full) : end] == full
        if len(windows) > 1:  # long answers: each chunk sees >= half a window of context
            assert len(w.inp) - len(w.targets) + 1 >= min(W // 2, start)


def test_loglikelihood_rolling_equals_direct_sum_over_disjoint_windows(smoke_lm):
    from pydoc_data.topics import topics

    text = list(topics.values())[3][:1500]
    (got,) = smoke_lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))
    toks = smoke_lm.tok.encode(text, add_special_tokens=False).ids
    W = smoke_lm.max_length
    assert len(toks) > 2 * W  # several windows
    seq = [BOS_ID] + toks  # seq[i + 1] is predicted from seq[:i + 1]
    want = 0.0
    for start in range(0, len(toks), W):  # disjoint blocks of W predicted tokens
        end = min(start + W, len(toks))
        lo = max(0, end - W)  # the input: the W tokens before each prediction's end
        with torch.no_grad():
            logp = torch.log_softmax(smoke_lm.model(torch.tensor([seq[lo:end]])).float(), -1)[0]
        for i in range(start, end):  # predict toks[i] = seq[i + 1] from position i - lo
            want += logp[i - lo, toks[i]].item()
    assert got == pytest.approx(want, abs=1e-3)

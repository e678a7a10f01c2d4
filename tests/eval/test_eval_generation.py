"""Greedy generation: KV cache equals plain forwards, left padding is invisible, stop
strings end generation (not just the returned text)."""

from __future__ import annotations

import torch
from eval_helpers import instances

from mobilemoe.eval.generation import greedy_generate
from mobilemoe.tokens import BOS_ID

PROMPTS = ["The library opens at", "def main():\n    print(", "Question: Who wrote Hamlet?\nAnswer:"]


def _ids(lm, text):
    return [BOS_ID] + lm.tok.encode(text, add_special_tokens=False).ids


def _no_cache_greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_kv_cache_generation_equals_plain_forward_argmax(smoke_lm):
    prompt = _ids(smoke_lm, PROMPTS[0])
    got = greedy_generate(smoke_lm.model, [prompt], [12], lambda i, new: False)[0]
    assert got == _no_cache_greedy(smoke_lm.model, prompt, 12)


def test_left_padded_batch_equals_each_prompt_alone(smoke_lm):
    prompts = [_ids(smoke_lm, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # really padded
    batch = greedy_generate(smoke_lm.model, prompts, [10, 10, 10], lambda i, new: False)
    alone = [greedy_generate(smoke_lm.model, [p], [10], lambda i, new: False)[0] for p in prompts]
    assert batch == alone


def test_generate_until_stops_at_stop_sequence(smoke_lm, monkeypatch):
    free = smoke_lm.generate_until(
        instances("generate_until", [(PROMPTS[2], {"until": [], "max_gen_toks": 24})])
    )[0]
    assert len(free) > 6
    stop = free[3:6]  # a string the model is known to produce greedily
    made = []
    real = smoke_lm._generate

    def counting(prompts, budgets, should_stop):
        out = real(prompts, budgets, should_stop)
        made.extend(len(t) for t in out)
        return out

    monkeypatch.setattr(smoke_lm, "_generate", counting)
    (cut,) = smoke_lm.generate_until(
        instances("generate_until", [(PROMPTS[2], {"until": [stop], "max_gen_toks": 24})])
    )
    assert cut == free.split(stop)[0] and stop not in cut
    assert made and made[0] < 24  # generation itself stopped early, not only the text


def test_generate_until_batched_equals_one_at_a_time(smoke_lm):
    reqs = instances("generate_until", [(p, {"until": ["\n\n"], "max_gen_toks": 8}) for p in PROMPTS])
    old = smoke_lm.batch_size
    try:
        smoke_lm.batch_size = 1
        single = smoke_lm.generate_until(reqs)
        smoke_lm.batch_size = 8
        batched = smoke_lm.generate_until(reqs)
    finally:
        smoke_lm.batch_size = old
    assert single == batched


def test_generation_budget_keeps_half_the_window_for_context(smoke_lm):
    W = smoke_lm.max_length
    assert smoke_lm._gen_budget(10, 256) == (10, W - 10)  # short prompt: room to generate
    assert smoke_lm._gen_budget(500, 256) == (W // 2, W - W // 2)  # long prompt: truncated, clamped
    assert smoke_lm._gen_budget(500, 16) == (W - 16, 16)  # small budget: all the rest is context

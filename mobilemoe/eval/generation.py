"""Greedy batched generation with the model's static KV cache, for lm-eval's generate_until.

Prompts of different lengths are LEFT-padded to one length L; ``key_valid`` marks the
padding keys so no real token attends to them. RoPE scores depend only on relative
positions, so a left-padded row computes what it would alone. The prompt is one prefill
call (positions 0..L-1); each new token is one decode call at the next position. A row
stops at its own token budget or when ``should_stop(row, new_tokens)`` says so (stop
strings, EOS); the batch stops when every row has.

    new_tokens = greedy_generate(model, [[1, 523, 88], [1, 17]], [32, 32], should_stop)
"""

from __future__ import annotations

from typing import Callable

from ..tokens import PAD_ID
from .forward import activation_device_dtype


def greedy_generate(
    model, prompts: list[list[int]], max_new_tokens: list[int], should_stop: Callable[[int, list[int]], bool]
) -> list[list[int]]:
    import torch

    B = len(prompts)
    L = max(len(p) for p in prompts)
    budget = max(max_new_tokens)
    new: list[list[int]] = [[] for _ in range(B)]
    done = [n <= 0 for n in max_new_tokens]
    if all(done):
        return new
    device, dtype = activation_device_dtype(model)
    model.setup_cache(B, L + budget, dtype=dtype)
    tokens = torch.full((B, L), PAD_ID, dtype=torch.long, device=device)
    key_valid = torch.ones(B, L + budget, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        tokens[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        key_valid[i, : L - len(p)] = False
    with torch.inference_mode():
        logits = model(tokens, input_pos=torch.arange(L, device=device), key_valid=key_valid)[:, -1]
        for step in range(budget):
            next_ids = logits.argmax(-1)
            picked = next_ids.tolist()
            for i in range(B):
                if done[i]:
                    continue
                new[i].append(picked[i])
                if len(new[i]) >= max_new_tokens[i] or should_stop(i, new[i]):
                    done[i] = True
            if all(done):
                break
            pos = torch.tensor([L + step], device=device)
            logits = model(next_ids.unsqueeze(1), input_pos=pos, key_valid=key_valid)[:, -1]
    return new

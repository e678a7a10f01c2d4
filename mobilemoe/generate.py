"""Eager text generation with the static KV cache (greedy, temperature, top-p, seed, stops).

    model, cfg = load_for_inference("runs/qat/final")           # mobilemoe.quant
    ids = generate_ids(model, prompt_ids, max_new_tokens=32)     # greedy
    ids = generate_ids(model, prompt_ids, 32, temperature=0.8, top_p=0.9, seed=0)
    text = generate_text(model, tokenizer, "Hi!", chat=True)

The same :class:`Sampler` drives the exported program (``mobilemoe.export.PteModel``), so
the eager model and the ``.pte`` given the same logits pick the same tokens. Chat models
(stage ``sft`` or ``qat``) are prompted with ``mobilemoe.tokens.chat_prompt`` and stop at
``STOP_TOKENS``; documents start with BOS as in pre-training.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from .errors import UserError
from .tokens import BOS_ID, END_OF_TURN_ID, EOS_ID, chat_prompt

STOP_IDS = (EOS_ID, END_OF_TURN_ID)  # ids of mobilemoe.tokens.STOP_TOKENS
CHAT_STAGES = ("sft", "qat")


class Sampler:
    """Next token from logits: argmax at temperature 0, else top-p sampling with a seed."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = None):
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        if seed is None and temperature > 0:
            self.generator.seed()  # unseeded sampling differs run to run, as asked

    def __call__(self, logits_V: torch.Tensor) -> int:
        logits_V = logits_V.float().reshape(-1)
        if self.temperature == 0:
            return int(torch.argmax(logits_V))
        probs_V = torch.softmax(logits_V / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = torch.sort(probs_V, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always the top token).
            keep = (torch.cumsum(sorted_p, 0) - sorted_p) < self.top_p
            probs_V = torch.zeros_like(probs_V).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs_V, 1, generator=self.generator))


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """BOS + the prompt (in the chat template for chat models), as the model was trained."""
    body = chat_prompt(text) if chat else text
    return [BOS_ID, *tokenizer.encode(body, add_special_tokens=False).ids]


def decode_new(tokenizer, ids: Sequence[int]) -> str:
    """Text of generated ids, without the trailing stop token."""
    ids = list(ids)
    while ids and ids[-1] in STOP_IDS:
        ids.pop()
    return tokenizer.decode(ids, skip_special_tokens=False)


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_ids: Optional[Iterable[int]] = STOP_IDS,
    seed: Optional[int] = None,
    max_len: Optional[int] = None,
) -> list[int]:
    """New ids after ``prompt_ids`` with the model's KV cache (a stop id ends it, included).

    ``max_len``: cache slots (default the model's ``max_seq_len``); prompt + new tokens
    never exceed it.
    """
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise UserError("generate needs at least one prompt token")
    max_len = max_len or model.cfg.max_seq_len
    if len(prompt) >= max_len:
        raise UserError(f"the prompt has {len(prompt)} tokens; the model's context is {max_len}")
    was_training = model.training
    model.eval()
    model.setup_cache(1, max_len)
    sampler = Sampler(temperature, top_p, seed)
    stop = set(stop_ids or ())
    try:
        n_new = min(max_new_tokens, max_len - len(prompt))
        out: list[int] = []
        if n_new <= 0:
            return out
        logits_V = model(torch.tensor([prompt]), input_pos=torch.arange(len(prompt)))[0, -1]
        while True:
            token = sampler(logits_V)
            out.append(token)
            if token in stop or len(out) == n_new:
                return out
            pos = len(prompt) + len(out) - 1
            logits_V = model(torch.tensor([[token]]), input_pos=torch.tensor([pos]))[0, -1]
    finally:
        model.train(was_training)


def generate_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 64, chat: bool = False, **sampling
) -> str:
    ids = encode_prompt(tokenizer, prompt, chat)
    return decode_new(tokenizer, generate_ids(model, ids, max_new_tokens, **sampling))


def is_chat_stage(stage: Optional[str]) -> bool:
    return stage in CHAT_STAGES

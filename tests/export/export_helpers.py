"""Checkpoints for export tests: the smoke model, briefly trained on real text, float or QAT.

A random model repeats one token or has flat logits full of near ties, which would make
greedy comparisons vacuous; a few seconds of training on CPython's help text gives peaked,
context-dependent next-token choices, like a real model's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

MINI = ["model.n_layers=1", "model.max_seq_len=96"]
QAT_META = {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}


def _text_tokens(tokenizer: Path) -> torch.Tensor:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer

    from mobilemoe.tokens import BOS_ID

    tok = Tokenizer.from_file(str(tokenizer))
    ids = []
    for text in list(topics.values())[:80]:
        ids += [BOS_ID, *tok.encode(text, add_special_tokens=False).ids]
    return torch.tensor(ids)


def _train(model, stream: torch.Tensor, steps: int, lr: float, gen: torch.Generator) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 65, (8,), generator=gen)
        x = torch.stack([stream[s : s + 65] for s in starts])
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()


def make_checkpoint(
    folder: Path,
    tokenizer: Path,
    overrides=MINI,
    stage: str = "qat",
    seed: int = 0,
    pretrain_steps: int = 200,
    qat_steps: int = 5,
) -> Path:
    """A checkpoint of the smoke preset (with ``overrides``), briefly trained on CPython's
    help text (so its next-token choices are peaked and context-dependent, like a real
    model's); for ``qat``: then prepare_qat and a few more steps, as the qat stage would."""
    from mobilemoe.checkpoint import save_checkpoint
    from mobilemoe.config import load_preset
    from mobilemoe.model import build_model
    from mobilemoe.quant import prepare_qat

    params = load_preset("smoke", list(overrides))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(params.model)
    stream = _text_tokens(tokenizer)
    _train(model, stream, pretrain_steps, 3e-3, gen)
    meta = {"stage": stage, "step": pretrain_steps, "qat": None}
    if stage == "qat":
        prepare_qat(model, params.qat)
        _train(model, stream, qat_steps, 5e-4, gen)
        meta = {"stage": "qat", "step": qat_steps, "qat": QAT_META}
    save_checkpoint(folder, model, meta, tokenizer=tokenizer)
    return folder


def expected_linears(cfg) -> int:
    """Linears each layer must run in XNNPACK: q, k, v, o; RoPE's rotate-half for q and k;
    the router; the shared expert's gate, up, down (a dense layer: gate, up, down); plus
    the LM head. The routed experts are the top-k kernel's, not linears."""
    per_moe = 4 + 2 + 1 + (3 if cfg.moe.n_shared_experts else 0)
    per_dense = 4 + 2 + 3
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    return n_moe * per_moe + (cfg.n_layers - n_moe) * per_dense + 1

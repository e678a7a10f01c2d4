"""Byte-level BPE tokenizer: training, loading, chat encoding.

The special tokens of ``mobilemoe.tokens`` take ids 0..5 for every vocabulary size.
The saved ``tokenizer.json`` loads with ``tokenizers`` and with ExecuTorch's
``pytorch_tokenizers`` (its HF tokenizer support), so the exported program's runner
reads the very file training used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from ..tokens import BOS_ID, EOS_ID, SPECIAL_TOKENS, format_chat


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE with ``vocab_size`` ids in all (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, "special tokens must take ids 0..5"
    return tok


def load_tokenizer(path: str | os.PathLike, vocab_size: int | None = None):
    """Load ``tokenizer.json``; with ``vocab_size``, check it matches the model's."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found (build it with `dvc repro`)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise UserError(f"{path}: not a valid tokenizer.json ({e})") from None
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise UserError(f"{path}: special token {name} is not id {i}; not a mobilemoe tokenizer")
    if vocab_size is not None and tok.get_vocab_size() > vocab_size:
        raise UserError(f"{path}: tokenizer has {tok.get_vocab_size()} ids but the model's "
                        f"vocab_size is {vocab_size}; they must match (model.vocab_size)")
    return tok


def encode_document(tok, text: str) -> list[int]:
    return [BOS_ID, *tok.encode(text, add_special_tokens=False).ids, EOS_ID]


def encode_chat(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one SFT example: ``<bos> prompt completion <eos>``; the mask
    is 1 on the completion's tokens (response + end-of-turn) and the final EOS."""
    p_text, c_text = format_chat(prompt, response)
    p_ids = tok.encode(p_text, add_special_tokens=False).ids
    c_ids = tok.encode(c_text, add_special_tokens=False).ids
    ids = [BOS_ID, *p_ids, *c_ids, EOS_ID]
    mask = [0] * (1 + len(p_ids)) + [1] * (len(c_ids) + 1)
    return ids, mask

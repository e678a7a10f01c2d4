"""Byte-level BPE tokenizer: training, loading, chat encoding.

    tok = train_tokenizer(texts, vocab_size=4096)     # the tokenizer stage (data.tokenizer.*)
    tok.save("data/tokenizer.json"); tok = load_tokenizer("data/tokenizer.json", 4096)
    ids, loss_mask = encode_chat(tok, "Hi?", "Hello.")

The special tokens of ``mobilemoe.tokens`` take ids 0..5 for every vocabulary size.
The saved ``tokenizer.json`` loads with ``tokenizers`` and with ExecuTorch's
``pytorch_tokenizers`` (its HF tokenizer support), so the exported program's runner
reads the very file training used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from ..tokens import BOS_ID, EOS_ID, SPECIAL_TOKENS, format_chat


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE with ``vocab_size`` ids in all (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    floor = len(SPECIAL_TOKENS) + 256  # the specials and the 256 byte symbols
    if vocab_size <= floor:
        raise UserError(
            f"model.vocab_size: {vocab_size} leaves no room for merges; a byte-level "
            f"BPE needs more than {floor} ids"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=min_frequency,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:  # not an assert: it must hold under python -O too
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, not {i}")
    return tok


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
        raise UserError(
            f"{path}: tokenizer has {tok.get_vocab_size()} ids but the model's "
            f"vocab_size is {vocab_size}; they must match (model.vocab_size)"
        )
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

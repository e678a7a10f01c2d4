"""Helpers of the trainer tests: smoke-sized params and small real shards (CPython's own
documentation text, tokenized with a real BPE tokenizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mobilemoe.config import parse_params, preset_path, to_dict


def smoke_params(*overrides: str, preset: str = "smoke"):
    """The smoke preset with 1 thread and cheap evaluation, plus dotted overrides.

    The data section is replaced by its defaults: the trainer reads none of it, and the
    data engineer's edits of it must not break these tests.
    """
    from mobilemoe.config.data import DataConfig

    raw = yaml.safe_load(preset_path(preset).read_text())
    raw["data"] = to_dict(DataConfig())
    base = ["runtime.threads=1"]
    return parse_params(raw, f"presets/{preset}.yaml", [*base, *overrides])


def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def write_text_shards(
    folder: Path, tokenizer_file: Path, docs: list[str], vocab_size: int = 512, val_every: int = 10
) -> Path:
    from tokenizers import Tokenizer

    from mobilemoe.checkpoint import sha256_file
    from mobilemoe.data.shards import ShardWriter
    from mobilemoe.data.tokenizer import encode_document

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = [np.array(encode_document(tok, d), dtype=np.int64) for d in docs]
    w = ShardWriter(folder, vocab_size)
    w.add_split("train", [d for i, d in enumerate(ids) if i % val_every])
    w.add_split("val", [d for i, d in enumerate(ids) if i % val_every == 0])
    w.close(tokenizer_sha256=sha256_file(tokenizer_file), source="pydoc_data.topics")
    return folder


def write_sft_shards(folder: Path, tokenizer_file: Path, vocab_size: int = 512) -> Path:
    """Prompt/response pairs from the Python docs: "Explain <topic>" -> its first paragraph."""
    from tokenizers import Tokenizer

    from mobilemoe.checkpoint import sha256_file
    from mobilemoe.data.shards import ShardWriter
    from mobilemoe.data.tokenizer import encode_chat

    tok = Tokenizer.from_file(str(tokenizer_file))
    pairs = []
    for name, text in _topics():
        para = next((p.strip() for p in text.split("\n\n") if len(p.strip()) > 80), None)
        if para:
            pairs.append(encode_chat(tok, f"Explain the Python topic '{name}'.", para[:600]))
    w = ShardWriter(folder, vocab_size)
    for split, keep in (("train", lambda i: i % 10), ("val", lambda i: i % 10 == 0)):
        chosen = [p for i, p in enumerate(pairs) if keep(i)]
        w.add_split(split, [np.array(p[0]) for p in chosen], masks=[np.array(p[1]) for p in chosen])
    w.close(tokenizer_sha256=sha256_file(tokenizer_file), source="pydoc_data.topics chat pairs")
    return folder


# One short pretrain configuration shared by the stage, resume and error tests.
PRETRAIN = (
    "pretrain.steps=12",
    "pretrain.checkpoint_every=4",
    "pretrain.eval_every=4",
    "pretrain.log_every=2",
    "pretrain.keep_checkpoints=2",
)


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def cpython_documents() -> list[str]:
    """CPython's own English text: help() topics and stdlib docstrings (~2 MB), in 4k pieces."""
    import random
    import sysconfig
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    import ast

    for path in sorted(stdlib.rglob("*.py")):
        if {"test", "tests", "idlelib", "site-packages"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        parts = [
            d
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and (d := ast.get_docstring(node, clean=True))
        ]
        text = "\n\n".join(parts)
        docs += [text[i : i + 4000] for i in range(0, len(text), 4000) if len(text) > 300]
    random.Random(0).shuffle(docs)
    return docs

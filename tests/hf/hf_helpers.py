"""Tiny checkpoints for the Hugging Face tests: the ``tiny`` preset and variants of it
(overrides of its model section), and batches of real text (CPython's help topics)."""

from __future__ import annotations

from pathlib import Path

import torch

# name -> overrides of the tiny preset
VARIANTS = {
    "tiny": [],
    "softmax": [
        "model.moe.router=softmax",
        "model.moe.n_shared_experts=0",
        "model.moe.shared_hidden=0",
        "model.moe.bias_update_rate=0.0",
        "model.moe.route_scale=1.0",
        "model.moe.renormalize=false",
        "model.moe.aux_loss_weight=0.01",
        "model.moe.n_dense_layers=1",
    ],
    "dense": [
        "model.moe=null",
        "model.rope_scaling={factor: 4.0, original_context: 32, low_freq_factor: 1.0, high_freq_factor: 4.0}",
    ],
    "dense_window": ["model.moe=null", "model.sliding_window=16", "model.global_every=4"],
}
SEQ = 64


def model_config(variant: str):
    """The tiny preset's model section with the variant's overrides (only that section is
    read, so the tests do not depend on the rest of the preset)."""
    import yaml

    from mobilemoe.config import preset_path
    from mobilemoe.config.base import build
    from mobilemoe.config.model import ModelConfig

    model = yaml.safe_load(preset_path("tiny").read_text())["model"]
    for item in VARIANTS[variant]:
        key, value = item.split("=", 1)
        *path, last = key.split(".")[1:]
        node = model
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return build(ModelConfig, model, "model")


def text_tokens(tokenizer: Path, n_topics: int = 80) -> torch.Tensor:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer

    from mobilemoe.tokens import BOS_ID

    tok = Tokenizer.from_file(str(tokenizer))
    ids: list[int] = []
    for text in list(topics.values())[:n_topics]:
        ids += [BOS_ID, *tok.encode(text, add_special_tokens=False).ids]
    return torch.tensor(ids)


def real_batch(tokenizer: Path, batch: int = 4, seq: int = SEQ) -> torch.Tensor:
    """``batch`` windows of real text (not the first ones trained on)."""
    stream = text_tokens(tokenizer, 120)[-batch * seq * 3 :]
    return torch.stack([stream[i * seq * 3 : i * seq * 3 + seq] for i in range(batch)])


def make_checkpoint(folder: Path, tokenizer: Path, variant: str, stage: str = "sft", seed: int = 0) -> Path:
    """A checkpoint of the variant with random weights that make every mapped tensor
    matter: matrices N(0, 0.1) (greedy choices vary with the context: at the default
    0.02 a model repeats one token), norm weights around 1 (a swapped q/k norm shows),
    router biases non-zero (the selection-only bias shows)."""
    from mobilemoe.checkpoint import save_checkpoint
    from mobilemoe.model import build_model

    torch.manual_seed(seed)
    model = build_model(model_config(variant))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
        for r in model.routers():
            if r.cfg.router == "sigmoid":
                r.expert_bias.copy_(0.05 * torch.randn(r.n_experts))
    save_checkpoint(folder, model, {"stage": stage, "step": 0, "qat": None}, tokenizer=tokenizer)
    return folder

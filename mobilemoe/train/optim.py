"""AdamW with no-decay groups: norms, biases and embeddings are not weight-decayed.

    optimizer = build_optimizer(model, cfg)

Weight decay pulls weights towards zero; on a norm's gain or a bias that fights the
parameter's purpose, and on the embedding (tied to the LM head here) it shrinks rare
tokens' rows that get few gradient updates (the usual GPT/OLMo recipe). The router's
``expert_bias`` is a buffer, outside the optimizer entirely.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.train import TrainStageConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():  # tied tensors appear once
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embeddings:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: TrainStageConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    # The fused kernel on CPU too: measured 8x faster than the default per-tensor path on
    # 212M expert parameters (2 threads), which matters for MoE, where every step updates
    # all experts' parameters. It is deterministic, so resumed CPU runs stay bit-identical.
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )

"""The ``pretrain``, ``midtrain``, ``sft`` and ``qat`` sections: one trainer, four configs.

The stages differ only in these values (data mix, schedule, loss mask, fake
quantization), never in code paths of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import fail, positive, require


@dataclass
class TrainStageConfig:
    steps: int = 100  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step, global (all ranks, all micro-batches)
    seq_len: int = 128  # tokens per sequence (<= model.max_seq_len)
    grad_accum: int = 1  # micro-batches per step (per rank: batch_size / nproc / grad_accum)
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final LR = lr * min_lr_ratio (0 anneals to zero)
    warmup_steps: int = 10
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    decay_fraction: float = 0.2  # wsd: last fraction of steps decays to the final LR
    weight_decay: float = 0.1  # AdamW; norms, biases, embeddings and expert_bias get none
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    eval_every: int = 25  # steps between validation losses (and at the end)
    eval_batches: int = 4  # validation batches per evaluation
    checkpoint_every: int = 50  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # latest checkpoints kept (>= 2 so a corrupt one has a fallback)
    log_every: int = 5  # steps between logged metrics
    nproc: int = 1  # data-parallel processes (torchrun); 1 = in-process

    def validate(self, key: str) -> None:
        positive(self, key, "steps", "batch_size", "seq_len", "grad_accum", "lr", "eval_every",
                 "eval_batches", "checkpoint_every", "log_every", "nproc", "eps")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "min_lr_ratio"):
            require(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        require(self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "must be <= 1")
        require(0 < self.decay_fraction <= 1, f"{key}.decay_fraction", "must be in (0, 1]")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"{key}.beta1",
                "betas must be in [0, 1)")
        require(self.keep_checkpoints >= 2, f"{key}.keep_checkpoints",
                "must be >= 2 (a corrupt latest checkpoint needs a previous one)")
        if self.batch_size % (self.nproc * self.grad_accum):
            fail(f"{key}.batch_size", f"{self.batch_size} is not divisible by nproc x grad_accum "
                 f"= {self.nproc} x {self.grad_accum}")
        require(self.warmup_steps < self.steps or self.steps == 1, f"{key}.warmup_steps",
                f"warmup_steps={self.warmup_steps} must be less than steps={self.steps}")


@dataclass
class QATStageConfig(TrainStageConfig):
    # Deployment format (PAPER.md, "QAT format"): symmetric INT4 weights in [-8, 7],
    # group 32, with INT8 dynamic per-token activations ("8da4w"); router and norms fp.
    scheme: Literal["8da4w"] = "8da4w"
    group_size: int = 32
    quantize_embedding: bool = True  # INT4 g32 embedding (PAPER.md)

    def validate(self, key: str) -> None:
        super().validate(key)
        positive(self, key, "group_size")

"""The ``pretrain``, ``midtrain``, ``sft`` and ``qat`` sections: one trainer, four configs.

The stages differ only in these values (data mix, schedule, loss mask, fake
quantization), never in code paths of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from .base import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    fail,
    require,
)


@dataclass
class TrainStageConfig:
    steps: PositiveInt = 100  # optimizer steps
    batch_size: PositiveInt = 16  # sequences per optimizer step, global (all ranks, all micro-batches)
    seq_len: PositiveInt = 128  # tokens per sequence (<= model.max_seq_len)
    grad_accum: PositiveInt = 1  # micro-batches per step (per rank: batch_size / nproc / grad_accum)
    # Peak learning rate. midtrain: pretrain's final LR (lr x min_lr_ratio), so its anneal on
    # high-quality text (docs/paper.md#training-recipe) continues pretrain's instead of
    # re-warming past it (a re-warm undid the anneal: tiny's midtrain val loss did not fall).
    lr: PositiveFloat = 3e-3
    min_lr_ratio: Fraction = 0.1  # final LR = lr * min_lr_ratio (0 anneals to zero)
    warmup_steps: NonNegativeInt = 10
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    decay_fraction: Annotated[float, Range(gt=0, le=1)] = (
        0.2  # wsd: last fraction of steps decays to the final LR
    )
    weight_decay: NonNegativeFloat = 0.1  # AdamW; norms, biases, embeddings and expert_bias get none
    beta1: Annotated[float, Range(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Range(ge=0, lt=1)] = 0.95
    eps: PositiveFloat = 1e-8
    grad_clip: NonNegativeFloat = 1.0  # max global grad norm (0 = off)
    eval_every: PositiveInt = 25  # steps between validation losses (and at the end)
    eval_batches: PositiveInt = 4  # validation batches per evaluation
    checkpoint_every: PositiveInt = 50  # steps between checkpoints (and at the end)
    keep_checkpoints: Annotated[int, Range(ge=2)] = (
        2  # latest checkpoints kept (>= 2 so a corrupt one has a fallback)
    )
    log_every: PositiveInt = 5  # steps between logged metrics
    nproc: PositiveInt = 1  # data-parallel processes (torchrun); 1 = in-process
    # How nproc > 1 processes share the model: ddp replicates it (weights, gradients and AdamW
    # state on every GPU: 16 bytes/param each); fsdp shards all three over the processes
    # (FSDP2; bf16 compute, fp32 master weights and routers). `mobilemoe plan` says which fits.
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    # Recompute each block's activations in backward instead of keeping them (~1/3 more
    # compute, activations of one block instead of all; see `mobilemoe plan`).
    activation_checkpointing: bool = False
    # Start from a Hugging Face folder (hf:PATH) or hub model (hf:ORG/NAME, network needed)
    # instead of the previous stage's checkpoint: released weights of this architecture,
    # trained on with this recipe (docs/hf.md#init-from-a-hugging-face-folder).
    init_from: Optional[str] = None

    def validate(self, key: str) -> None:
        if self.init_from is not None and (not self.init_from.startswith("hf:") or self.init_from == "hf:"):
            fail(f"{key}.init_from", f"{self.init_from!r} must be hf:PATH or hf:ORG/NAME (or null)")
        if self.batch_size % (self.nproc * self.grad_accum):
            fail(
                f"{key}.batch_size",
                f"{self.batch_size} is not divisible by nproc x grad_accum "
                f"= {self.nproc} x {self.grad_accum}",
            )
        require(
            self.warmup_steps < self.steps or self.steps == 1,
            f"{key}.warmup_steps",
            f"warmup_steps={self.warmup_steps} must be less than steps={self.steps}",
        )


@dataclass
class QATStageConfig(TrainStageConfig):
    # Deployment format (docs/paper.md#qat-and-int4-format): symmetric INT4 weights in [-8, 7],
    # group 32, with INT8 dynamic per-token activations ("8da4w"); router and norms fp.
    scheme: Literal["8da4w"] = "8da4w"
    group_size: PositiveInt = 32
    quantize_embedding: bool = True  # INT4 g32 embedding (docs/paper.md#qat-and-int4-format)

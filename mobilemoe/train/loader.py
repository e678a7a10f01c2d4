"""Batches of random windows over packed token shards, a pure function of (seed, step).

    loader = WindowLoader(shards.train, batch_size=16, seq_len=128, seed=s, rank=0, world=1,
                          grad_accum=1)
    for x_BT, y_BT, mask_BT in loader.micro_batches(step): ...
    val = fixed_windows(shards.val, n=64, seq_len=128)   # the same windows at every eval

Step ``s`` draws the *global* batch of ``batch_size`` window offsets from a generator
seeded with ``(seed, s)`` (nanoGPT-style random crops: inputs ``t[i:i+L]``, targets
``t[i+1:i+L+1]``). Every rank draws the same global batch and takes its own contiguous
slice, cut into ``grad_accum`` micro-batches. So:

* a resumed run draws exactly the batches an uninterrupted one would (no loader state
  beyond the step to save);
* 1 process and N processes see the same global batch (the DDP equivalence);
* the loss-token count of the global batch is known on every rank without communication,
  so each micro-batch's loss is normalised by the same global count.

With a loss mask (SFT shards: 1 = target carries loss), the mask of window i is
``m[i+1:i+L+1]`` (aligned with the targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from ..data.shards import ShardSplit
from ..errors import UserError


@dataclass
class MicroBatch:
    inputs: torch.Tensor  # (b, L) int64
    targets: torch.Tensor  # (b, L) int64
    mask: Optional[torch.Tensor]  # (b, L) float32 (1 = loss) or None = every target


def _windows(split: ShardSplit, offsets: np.ndarray, seq_len: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    idx = offsets[:, None] + np.arange(seq_len + 1)[None, :]
    tokens = np.asarray(split.tokens[idx], dtype=np.int64)
    mask = None if split.mask is None else np.asarray(split.mask[idx[:, 1:]], dtype=np.float32)
    return tokens, mask


def _to_batch(tokens: np.ndarray, mask: Optional[np.ndarray], device) -> MicroBatch:
    t = torch.from_numpy(tokens)
    m = None if mask is None else torch.from_numpy(mask)
    if device.type == "cuda":  # async copies from pinned memory: no host sync per step
        t = t.pin_memory().to(device, non_blocking=True)
        m = None if m is None else m.pin_memory().to(device, non_blocking=True)
    return MicroBatch(t[:, :-1], t[:, 1:], m)


def check_split(split: ShardSplit, seq_len: int, where: str) -> None:
    if len(split) < seq_len + 1:
        raise UserError(
            f"{where}: the {split.name} split has {len(split)} tokens, fewer than one "
            f"window of seq_len+1 = {seq_len + 1}; lower seq_len or add data"
        )
    if split.mask is not None and not split.mask.any():
        raise UserError(
            f"{where}: the {split.name} split's loss mask is all zero (no response "
            "tokens carry loss); rebuild the SFT shards"
        )


class WindowLoader:
    def __init__(
        self,
        split: ShardSplit,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        grad_accum: int = 1,
        device: torch.device | str = "cpu",
        stream: int = 0,
    ):
        if batch_size % (world * grad_accum):
            raise UserError(
                f"batch_size={batch_size} is not divisible by processes x grad_accum = {world} x {grad_accum}"
            )
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.seed, self.stream = seed, stream
        self.rank, self.world, self.grad_accum = rank, world, grad_accum
        self.micro_size = batch_size // world // grad_accum
        self.device = torch.device(device)
        self.high = len(split) - seq_len  # offsets in [0, high): window + 1 target fits

    def offsets(self, step: int) -> np.ndarray:
        """The global batch's window offsets at ``step`` (the same on every rank)."""
        rng = np.random.default_rng([self.seed, self.stream, step])
        return rng.integers(0, self.high, size=self.batch_size)

    def loss_tokens(self, offsets: np.ndarray) -> int:
        """Targets carrying loss in the whole global batch (>= 1)."""
        if self.split.mask is None:
            return self.batch_size * self.seq_len
        idx = offsets[:, None] + 1 + np.arange(self.seq_len)[None, :]
        return max(1, int(self.split.mask[idx].sum()))

    def micro_batches(self, step: int) -> tuple[list[MicroBatch], int]:
        """This rank's micro-batches at ``step`` and the global batch's loss-token count."""
        offsets = self.offsets(step)
        count = self.loss_tokens(offsets)
        per_rank = self.batch_size // self.world
        mine = offsets[self.rank * per_rank : (self.rank + 1) * per_rank]
        out = []
        for i in range(self.grad_accum):
            tokens, mask = _windows(
                self.split, mine[i * self.micro_size : (i + 1) * self.micro_size], self.seq_len
            )
            out.append(_to_batch(tokens, mask, self.device))
        return out, count


def fixed_windows(split: ShardSplit, n: int, seq_len: int) -> np.ndarray:
    """``n`` window offsets spread evenly over the split (deterministic, covers all of it)."""
    high = len(split) - seq_len - 1
    return np.unique(np.linspace(0, max(0, high), num=n).round().astype(np.int64))


def eval_batches(
    split: ShardSplit, offsets: np.ndarray, seq_len: int, batch: int, rank: int, world: int, device
) -> Iterator[MicroBatch]:
    """This rank's share of the fixed validation windows, ``batch`` at a time."""
    mine = offsets[rank::world]
    for i in range(0, len(mine), batch):
        tokens, mask = _windows(split, mine[i : i + batch], seq_len)
        yield _to_batch(tokens, mask, torch.device(device))

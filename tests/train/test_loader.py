"""The window loader: deterministic per step, the same global batch for any process count,
targets shifted by one, masks aligned with targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilemoe.data.shards import ShardWriter, TokenShards
from mobilemoe.errors import UserError
from mobilemoe.train.loader import WindowLoader, eval_batches, fixed_windows


@pytest.fixture
def split(tmp_path):
    tokens = np.arange(10_000) % 500
    mask = (np.arange(10_000) // 7) % 2  # alternating runs of 7 zeros / 7 ones
    w = ShardWriter(tmp_path / "mix", 512)
    w.add_split("train", [tokens], masks=[mask])
    w.add_split("val", [tokens[:300]], masks=[mask[:300]])
    w.close()
    return TokenShards(tmp_path / "mix")


def test_same_step_same_batch_and_steps_differ(split):
    a = WindowLoader(split.train, 8, 16, seed=3)
    b = WindowLoader(split.train, 8, 16, seed=3)
    (x1,), _ = a.micro_batches(5)
    (x2,), _ = b.micro_batches(5)
    (x3,), _ = a.micro_batches(6)
    assert torch.equal(x1.inputs, x2.inputs)
    assert not torch.equal(x1.inputs, x3.inputs)
    (x4,), _ = WindowLoader(split.train, 8, 16, seed=4).micro_batches(5)
    assert not torch.equal(x1.inputs, x4.inputs)


def test_targets_are_inputs_shifted_and_mask_follows_targets(split):
    loader = WindowLoader(split.train, 4, 32, seed=0)
    (mb,), count = loader.micro_batches(0)
    assert torch.equal(mb.inputs[:, 1:], mb.targets[:, :-1])
    off = loader.offsets(0)
    for i, o in enumerate(off):
        assert mb.inputs[i].tolist() == (np.arange(o, o + 32) % 500).tolist()
        assert mb.mask[i].tolist() == (((np.arange(o + 1, o + 33)) // 7) % 2).tolist()
    assert count == int(mb.mask.sum())


def test_ranks_and_micro_batches_partition_the_global_batch(split):
    (full,), count = WindowLoader(split.train, 8, 16, seed=1).micro_batches(9)
    parts = []
    for rank in range(2):
        mbs, c = WindowLoader(split.train, 8, 16, seed=1, rank=rank, world=2, grad_accum=2).micro_batches(9)
        assert c == count  # every rank knows the global loss-token count
        assert len(mbs) == 2 and mbs[0].inputs.shape == (2, 16)
        parts += [mb.inputs for mb in mbs]
    assert torch.equal(torch.cat(parts), full.inputs)


def test_indivisible_batch_and_short_split_are_user_errors(split, tmp_path):
    with pytest.raises(UserError, match="not divisible"):
        WindowLoader(split.train, 6, 16, seed=0, world=4)
    from mobilemoe.train.loader import check_split

    with pytest.raises(UserError, match="fewer than one window"):
        check_split(split.val, 400, "mix")


def test_validation_windows_are_fixed_and_cover_the_split(split):
    off = fixed_windows(split.val, 8, 16)
    assert off[0] == 0 and off[-1] == len(split.val) - 17
    assert np.array_equal(off, fixed_windows(split.val, 8, 16))
    got = torch.cat([mb.inputs for r in range(2) for mb in eval_batches(split.val, off, 16, 3, r, 2, "cpu")])
    assert got.shape == (8, 16)  # two ranks together see every window once

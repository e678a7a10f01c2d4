"""Checkpoint-model helpers for evaluation: where activations live, the model without
its output head, and the forward pass over packed prefix-tree rows.

    with hidden_states(model) as head:           # forward returns final hidden states
        logits = head(h[:, -3:])                 # the vocab-wide head on 3 positions only
    h = packed_forward(model, tokens, positions, mask)   # rows of mobilemoe.eval.scoring
"""

from __future__ import annotations

from contextlib import contextmanager

# Query block of packed rows with lower-triangular masks (our choice: 64 keeps the number
# of SDPA calls small and skips ~40% of a 256-token row's attention; measured on CPU).
PACKED_QUERY_BLOCK = 64


def activation_device_dtype(model):
    """Where and in which dtype activations (and so the KV cache) live: read from a norm
    weight, which quantization never touches (a quantized embedding's weight may be int)."""
    w = model.norm.weight
    return w.device, w.dtype


@contextmanager
def hidden_states(model):
    """The model without its output head (restored after): the head is the largest
    matmul at a small d_model, and scoring needs it on a few positions per row."""
    import torch

    head = model.output
    model.output = torch.nn.Identity()
    try:
        yield head
    finally:
        model.output = head


def blockwise_attention(q, k, v, attn_mask, **kwargs):
    """SDPA in query blocks: block [a, b) reads keys [0, b) only. Exact when the mask has
    nothing above the diagonal (prefix trees packed in order, as ``build_packed`` makes
    them); ~0.6x the attention work of a 256-token row, since a plain masked SDPA scores
    every key of the row. Same signature as ``F.scaled_dot_product_attention``."""
    import torch
    import torch.nn.functional as F

    T, step = q.shape[2], PACKED_QUERY_BLOCK
    blocks = []
    for a in range(0, T, step):
        b = min(a + step, T)
        blocks.append(
            F.scaled_dot_product_attention(
                q[:, :, a:b], k[:, :, :b], v[:, :, :b], attn_mask=attn_mask[..., a:b, :b], **kwargs
            )
        )
    return torch.cat(blocks, dim=2)


def packed_forward(model, tokens, positions, mask):
    """The model's output on packed rows (tokens, RoPE positions, (B, T, T) bool mask):
    query-block attention when the mask allows it (nothing above the diagonal), else the
    model's plain masked attention."""
    attend = None if mask.triu(1).any() else blockwise_attention
    return model(tokens, positions=positions, attn_mask=mask, attend=attend)

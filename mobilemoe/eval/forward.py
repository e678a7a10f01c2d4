"""Checkpoint-model helpers for evaluation: where activations live, and the model
without its output head.

    with hidden_states(model) as head:           # forward returns final hidden states
        logits = head(h[:, -3:])                 # the vocab-wide head on 3 positions only
"""

from __future__ import annotations

from contextlib import contextmanager


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

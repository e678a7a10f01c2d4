"""Checkpoint-model forward passes for scoring: scored positions only, shared contexts once.

    with hidden_states(model) as head:           # forward returns final hidden states
        logits = head(h[:, -3:])                 # the vocab-wide head on 3 positions only
    state = CachedPrefixes(model, [ctx_a, ctx_b], max_suffix=12)   # contexts -> KV cache
    state.extend([0, 0, 1], [ans_a1, ans_a2, ans_b1])               # answers, one batch

``CachedPrefixes`` LEFT-pads the contexts (``key_valid`` hides the pads; RoPE depends on
relative positions only, so a padded row computes what it would alone), keeps each
layer's cache after the prefill, and for every batch of continuations copies out the
cache rows of their contexts, so any mix of continuations can follow any prefill.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..tokens import PAD_ID


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


class CachedPrefixes:
    def __init__(self, model, prefixes: list[list[int]], max_suffix: int):
        import torch

        self.model = model
        dev, dtype = activation_device_dtype(model)
        self.device = dev
        G, Lp = len(prefixes), max(len(p) for p in prefixes)
        self.Lp, S = Lp, Lp + max(max_suffix, 0)
        model.setup_cache(G, max(S, 1), dtype=dtype)
        x = torch.full((G, Lp), PAD_ID, dtype=torch.long)
        key_valid = torch.ones(G, max(S, 1), dtype=torch.bool)
        for g, p in enumerate(prefixes):
            x[g, Lp - len(p):] = torch.tensor(p, dtype=torch.long)
            key_valid[g, :Lp - len(p)] = False
        self.key_valid = key_valid.to(dev)
        with torch.inference_mode(), hidden_states(model) as head:
            self.head = head
            self.last = model(x.to(dev), input_pos=torch.arange(Lp, device=dev),
                              key_valid=self.key_valid)[:, -1]  # (G, D): predicts suffix[0]
        self.caches = [(layer.attn.k_cache, layer.attn.v_cache) for layer in model.layers]

    def extend(self, group_idx: list[int], suffixes: list[list[int]]):
        """Per row, logits (len(suffix) + 1, V): the prefix's last position, then the
        suffix's positions."""
        import torch

        dev = self.device
        idx = torch.tensor(group_idx, device=dev)
        Ls = max(len(s) for s in suffixes)
        hidden = [[self.last[g].unsqueeze(0)] for g in group_idx]
        with torch.inference_mode(), hidden_states(self.model):
            if Ls:
                for layer, (k, v) in zip(self.model.layers, self.caches):
                    layer.attn.k_cache = k.index_select(0, idx)  # fresh rows: the prefill
                    layer.attn.v_cache = v.index_select(0, idx)  # cache is never written
                y = torch.full((len(suffixes), Ls), PAD_ID, dtype=torch.long)
                for r, s in enumerate(suffixes):
                    y[r, :len(s)] = torch.tensor(s, dtype=torch.long)
                # Right-padded suffixes: pads come after every real token, causally unseen.
                h = self.model(y.to(dev), input_pos=torch.arange(self.Lp, self.Lp + Ls, device=dev),
                               key_valid=self.key_valid.index_select(0, idx))
                for r, s in enumerate(suffixes):
                    hidden[r].append(h[r, :len(s)])
            rows = [torch.cat(hs) for hs in hidden]
            return list(self.head(torch.cat(rows)).split([len(r) for r in rows]))

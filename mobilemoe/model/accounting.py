"""Parameter, FLOP and memory accounting of a model config.

Counts come from the model built on the meta device (shapes only, no weight memory),
so they are the model's own ``numel`` sums, not a separate formula that could drift.

Conventions (docs/paper.md#budgets-and-scaling-law: memory = INT4 bytes of ALL parameters, compute = FLOPs
of the ACTIVE parameters):

* active params: all params minus the routed experts a token does not use
  ((E - k) experts per MoE layer); the embedding counts (it is read per token).
* FLOPs per token (forward): 2 per multiply-add over every matmul a token goes through
  (attention projections, router, the k routed + shared experts or the dense FFN, the
  LM head), plus attention scores and values at ``context`` keys
  (2 * 2 * heads * head_dim * keys per layer; local layers see min(context, window)).
  The embedding lookup is not a matmul and is not counted.
* INT4 weight bytes (the deployment format, docs/paper.md#qat-and-int4-format): symmetric int4,
  group 32 along the input dim, one fp16 scale per group: 0.5 B/weight + 2 B/32 weights,
  for every linear, expert and the embedding (tied embeddings stored once); router
  weights stay fp32 (4 B); norm weights fp16 (2 B).
* bf16 weight bytes: 2 B per parameter.
* KV-cache bytes per token: K and V, every layer, n_kv_heads * head_dim, bf16.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config.model import ModelConfig

INT4_GROUP = 32  # docs/paper.md#qat-and-int4-format: group size 32
INT4_BYTES = 0.5
SCALE_BYTES = 2  # fp16 scale per group (docs/paper.md#qat-and-int4-format)
ROUTER_BYTES = 4  # router kept fp32 (docs/paper.md#qat-and-int4-format)
NORM_BYTES = 2  # our choice: norms stored fp16 beside the INT4 weights
BF16_BYTES = 2
GIB = 2**30


@dataclass
class Accounting:
    name: str
    total_params: int
    active_params: int
    embedding_params: int
    flops_per_token: int
    context: int
    int4_weight_bytes: int
    bf16_weight_bytes: int
    kv_cache_bytes_per_token: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def int4_weight_gib(self) -> float:
        return self.int4_weight_bytes / GIB


def _int4_bytes(rows: int, cols: int) -> int:
    groups = rows * math.ceil(cols / INT4_GROUP)
    return int(rows * cols * INT4_BYTES) + groups * SCALE_BYTES


def account(cfg: ModelConfig, context: int | None = None) -> Accounting:
    import torch  # noqa: F401  (keep `mobilemoe.config` importable without torch)

    from .moe import RoutedExperts, Router
    from .transformer import RMSNorm, build_model

    context = context or cfg.max_seq_len
    model = build_model(cfg, device="meta")
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once

    inactive = 0
    for experts in model.routed_experts():
        per_expert = (experts.w13.numel() + experts.w2.numel()) // experts.n_experts
        top_k = cfg.moe.top_k if cfg.moe is not None else experts.n_experts
        inactive += (experts.n_experts - top_k) * per_expert
    active = total - inactive
    embedding = model.tok_embeddings.weight.numel()

    # matmul params a token passes through: active minus embedding lookup and norms,
    # plus the LM head (tied or not, it is a d_model x vocab matmul per token).
    norm_params = sum(
        p.numel() for m in model.modules() if isinstance(m, RMSNorm) for p in m.parameters(recurse=False)
    )
    head = cfg.vocab_size * cfg.d_model
    matmul_active = active - embedding - norm_params + (head if cfg.tie_embeddings else 0)
    hd = cfg.resolved_head_dim
    attn = 0
    for layer in range(cfg.n_layers):
        window = cfg.sliding_window if cfg.is_local_layer(layer) else None
        keys = min(context, window) if window is not None else context
        attn += 2 * 2 * cfg.n_heads * hd * keys
    flops = 2 * matmul_active + attn

    int4 = 0
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, Router):
                int4 += p.numel() * ROUTER_BYTES
            elif isinstance(module, RMSNorm):
                int4 += p.numel() * NORM_BYTES
            elif isinstance(module, RoutedExperts):
                e, rows, cols = p.shape
                int4 += e * _int4_bytes(rows, cols)
            else:  # nn.Linear / nn.Embedding weights: (rows, in/embedding dim)
                rows, cols = p.shape
                int4 += _int4_bytes(rows, cols)

    kv = 2 * cfg.n_layers * cfg.n_kv_heads * hd * BF16_BYTES
    return Accounting(
        name=cfg.name,
        total_params=total,
        active_params=active,
        embedding_params=embedding,
        flops_per_token=int(flops),
        context=context,
        int4_weight_bytes=int(int4),
        bf16_weight_bytes=total * BF16_BYTES,
        kv_cache_bytes_per_token=kv,
    )


@dataclass
class DecodeBytes:
    """Bytes one decoded token reads from memory, in the deployment format.

    ``active_weight_bytes``: every linear it passes (attention, router in fp32, shared
    expert, the top-k routed experts, dense FFNs, the LM head, norms) plus one embedding
    row; ``total_weight_bytes``: all weights (``Accounting.int4_weight_bytes``);
    ``kv_bytes``: ``kv_slots`` fp32 cache slots of every layer, an upper bound; what the
    exported program's ``mmoe::attend_kv`` reads at a position is :func:`kv_read_bytes`.
    """

    active_weight_bytes: int
    total_weight_bytes: int
    kv_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def kv_slots_read(cfg: ModelConfig, position: int) -> int:
    """Cache slots all layers' attention reads for a query at ``position``: the exported
    program's ``mmoe::attend_kv`` reads slots 0..position, at most the window in a
    sliding-window layer."""
    return sum(
        min(position + 1, cfg.sliding_window)
        if cfg.sliding_window and cfg.is_local_layer(i)
        else position + 1
        for i in range(cfg.n_layers)
    )


def kv_read_bytes(cfg: ModelConfig, position: int, kv_dtype_bytes: int = 4) -> int:
    """KV-cache bytes (K and V) the exported program reads to decode a token at ``position``."""
    return 2 * cfg.n_kv_heads * cfg.resolved_head_dim * kv_dtype_bytes * kv_slots_read(cfg, position)


def decode_bytes(cfg: ModelConfig, kv_slots: int, kv_dtype_bytes: int = 4) -> DecodeBytes:
    import torch  # noqa: F401
    from torch import nn

    from .moe import RoutedExperts, Router
    from .transformer import RMSNorm, build_model

    model = build_model(cfg, device="meta")
    read = 0
    for module in model.modules():
        if isinstance(module, Router):
            read += module.weight.numel() * ROUTER_BYTES
        elif isinstance(module, RMSNorm):
            read += sum(p.numel() for p in module.parameters(recurse=False)) * NORM_BYTES
        elif isinstance(module, RoutedExperts):
            top_k = cfg.moe.top_k if cfg.moe is not None else module.n_experts
            for p in (module.w13, module.w2):
                _, rows, cols = p.shape
                read += top_k * _int4_bytes(rows, cols)
        elif isinstance(module, nn.Embedding):
            read += _int4_bytes(1, module.embedding_dim)  # one row
        elif isinstance(module, nn.Linear):  # the LM head too, tied or not
            read += _int4_bytes(*module.weight.shape)
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.resolved_head_dim * kv_slots * kv_dtype_bytes
    return DecodeBytes(
        active_weight_bytes=int(read), total_weight_bytes=account(cfg).int4_weight_bytes, kv_bytes=int(kv)
    )

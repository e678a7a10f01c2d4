"""Closed-form parameter, FLOP and byte counts, vectorised over many candidate shapes.

``mobilemoe.model.accounting.account`` counts a model built on the meta device: exact,
but ~10 ms a model, too slow for the hundreds of thousands of shapes ``mobilemoe design``
weighs. :func:`count` is the same arithmetic written out (numpy arrays or ints in, the
same out); ``tests/scaling/test_shapes.py`` checks it equals ``account`` and
``decode_bytes`` to the byte on dense, MoE, windowed and untied models, so the two
cannot drift unnoticed. The design's reported ``accounting`` of its best shapes comes
from ``account`` itself.

Conventions are accounting's (docs/paper.md#budgets-and-scaling-law): memory = INT4 g32
bytes of ALL weights, compute = forward FLOPs per token at ``context``. "Non-embedding"
(the scaling law's N) leaves out the embedding and an untied LM head.
"""

from __future__ import annotations

from typing import Any

from ..config.model import ModelConfig
from ..model.accounting import INT4_BYTES, INT4_GROUP, NORM_BYTES, ROUTER_BYTES, SCALE_BYTES

KV_DTYPE_BYTES = 4  # the exported program's cache is fp32 (accounting.kv_read_bytes)


def _int4(rows: Any, cols: Any) -> Any:
    """INT4 bytes of a (rows, cols) weight grouped along cols: accounting._int4_bytes."""
    assert INT4_BYTES == 0.5  # two weights a byte
    return rows * cols // 2 + rows * (-(-cols // INT4_GROUP)) * SCALE_BYTES


def shape_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The integers :func:`count` needs, read off a model config."""
    hd = cfg.resolved_head_dim
    n_local = sum(cfg.is_local_layer(i) for i in range(cfg.n_layers))
    moe = cfg.moe
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    return dict(
        V=cfg.vocab_size,
        d=cfg.d_model,
        L=cfg.n_layers,
        H=cfg.n_heads,
        kv=cfg.n_kv_heads,
        hd=hd,
        tied=bool(cfg.tie_embeddings),
        qk_norm=bool(cfg.qk_norm),
        n_local=n_local,
        window=cfg.sliding_window or 0,
        n_moe=n_moe,
        E=moe.n_routed_experts if moe else 0,
        w=moe.expert_hidden if moe else 0,
        k=moe.top_k if moe else 0,
        hs=(moe.n_shared_experts * moe.shared_hidden) if moe else 0,
        dense_h=cfg.ffn_hidden,
    )


def count(f: dict[str, Any], context: int, kv_position: int | None = None) -> dict[str, Any]:
    """Counts of the shapes in ``f`` (ints, or numpy int64 arrays that broadcast).

    Returns total / active / embedding / non-embedding params, forward FLOPs per token at
    ``context`` keys, INT4 bytes of all weights, the INT4 weight bytes a decoded token
    reads (top-k experts, one embedding row, the LM head) and, with ``kv_position``, the
    fp32 KV-cache bytes read at that position.
    """
    V, d, L, H, kv, hd = f["V"], f["d"], f["L"], f["H"], f["kv"], f["hd"]
    E, w, k, hs, n_moe = f["E"], f["w"], f["k"], f["hs"], f["n_moe"]
    n_dense = L - n_moe
    dense_h = f["dense_h"]
    qkn = 2 * hd if f["qk_norm"] else 0
    head = 0 if f["tied"] else V * d

    attn = 2 * d * H * hd + 2 * d * kv * hd
    layer_norms = 2 * d + qkn
    moe_layer = E * d + 3 * d * w * E + 3 * d * hs
    total = V * d + head + L * (attn + layer_norms) + d + n_dense * 3 * d * dense_h + n_moe * moe_layer
    active = total - n_moe * (E - k) * 3 * d * w
    norm_params = L * layer_norms + d
    matmul_active = active - V * d - norm_params + (V * d if f["tied"] else 0)
    n_local = f["n_local"]
    keys_local = min(context, f["window"]) if f["window"] else context
    attn_flops = 4 * H * hd * ((L - n_local) * context + n_local * keys_local)

    attn_i4 = _int4(H * hd, d) + 2 * _int4(kv * hd, d) + _int4(d, H * hd)
    expert_i4 = _int4(2 * w, d) + _int4(d, w)
    shared_i4 = _int4(2 * hs, d) + _int4(d, hs)
    dense_i4 = _int4(2 * dense_h, d) + _int4(d, dense_h)
    norm_bytes = (L * layer_norms + d) * NORM_BYTES
    common = L * attn_i4 + norm_bytes + n_dense * dense_i4 + n_moe * (E * d * ROUTER_BYTES + shared_i4)
    int4_bytes = _int4(V, d) + (0 if f["tied"] else _int4(V, d)) + common + n_moe * E * expert_i4
    decode_weight_bytes = _int4(1, d) + _int4(V, d) + common + n_moe * k * expert_i4

    out = dict(
        total_params=total,
        active_params=active,
        embedding_params=V * d,
        non_embedding_params=total - V * d - head,
        non_embedding_active_params=active - V * d - head,
        flops_per_token=2 * matmul_active + attn_flops,
        int4_weight_bytes=int4_bytes,
        decode_weight_bytes=decode_weight_bytes,
    )
    if kv_position is not None:
        slots_local = min(kv_position + 1, f["window"]) if f["window"] else kv_position + 1
        slots = (L - n_local) * (kv_position + 1) + n_local * slots_local
        out["decode_kv_bytes"] = 2 * kv * hd * KV_DTYPE_BYTES * slots
    return out


def count_model(cfg: ModelConfig, context: int, kv_position: int | None = None) -> dict[str, int]:
    """:func:`count` of one config, as plain ints."""
    return {k: int(v) for k, v in count(shape_fields(cfg), context, kv_position).items()}

"""Architectures from scaling-law coordinates, and the coordinates back from a model.

    from mobilemoe.scaling.shapes import make_model, coordinates
    cfg = make_model(params.model, active_params=200_000, sparsity=8, granularity=8, shared_fraction=0.5)
    coordinates(cfg)  # {'active_params': ..., 'sparsity': 8.0, 'granularity': 8.0, ...}

The coordinates (docs/scaling.md#the-coordinates), read as docs/paper.md#mobilemoe-s-architecture
reads MobileMoE-S: the reference dense FFN of width ``FFN_MULT * d_model`` is cut into
``G`` (granularity) *slots* of width ``4d/G``; a token uses ``G`` slots' worth of expert
width (so the active FFN width is the dense one's whatever G); there are ``S * G`` slots
in all (S = sparsity = total slots / active slots); ``f * G`` of the active slots form
one always-on shared expert (f = shared fraction), the rest are routed top-k. MobileMoE-S
is (S=8, G=8, f=0.5): 64 slots of 384, a shared expert of 4 slots (1536), 60 routed, top-4.

Shapes are snapped, never rounded silently into something else: ``d_model`` is a
multiple of 32 (the INT4 group, so every input dim groups exactly), of the head dim
(whole heads) and of ``8G`` (so a slot is a multiple of 32 wide). A coordinate that
cannot be met exactly raises a :class:`ConfigError` naming the key.

Depth (docs/scaling.md#the-coordinates): the published family keeps d_model / n_layers near
40 (768/20, 1024/26, 1280/32); MobileLLM's deep-and-thin models sit near 20-30. A shape's
aspect ratio d_model / n_layers must lie in [ASPECT_MIN, ASPECT_MAX], with at least
MIN_LAYERS layers; among the shapes within 3% of the best reachable parameter count the
one closest to ASPECT (40) wins.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..config.base import ConfigError
from ..config.model import ModelConfig, MoEConfig
from .counts import count, count_model

FFN_MULT = 4  # reference dense FFN width = 4 * d_model (MobileMoE-S: 3072 = 4 x 768)
SLOT_MULTIPLE = 32  # the INT4 group (docs/paper.md#qat-and-int4-format): slot widths are multiples
ASPECT = 40.0  # preferred d_model / n_layers (the MobileMoE family, docs/paper.md#mobilemoe-m-and-l)
ASPECT_MIN = 16.0  # deepest allowed (MobileLLM-125M is 576/30 = 19)
ASPECT_MAX = 64.0  # widest allowed
MIN_LAYERS = 2  # our choice: a 1-layer transformer is not a model of the family
MATCH_TOLERANCE = 0.03  # shapes within 3% (in log params) of the best match compete on aspect
MAX_MISMATCH = 0.25  # a target that no shape reaches within 25% is an error
# Router settings kept from the base; MobileMoE's (docs/paper.md#routing) when the base is dense.
ROUTER_FIELDS = (
    "router",
    "route_scale",
    "renormalize",
    "bias_update_rate",
    "aux_loss_weight",
    "z_loss_weight",
)
PAPER_ROUTER: dict[str, Any] = dict(
    router="sigmoid", route_scale=2.5, renormalize=True, bias_update_rate=0.001
)


def _close_to_int(x: float) -> bool:
    return abs(x - round(x)) < 1e-6


def arch_slots(
    sparsity: float, granularity: float, shared_fraction: float, key: str
) -> tuple[int, int, int, int]:
    """``(G, total_slots, shared_slots, top_k)`` of the coordinates, or a ConfigError.

    Dense (sparsity 1) is returned as G=1 and no shared slots: with every slot active
    the split into slots, shared or routed, computes the same function."""
    if not (isinstance(sparsity, (int, float)) and sparsity >= 1):
        raise ConfigError(
            f"{key}.sparsity: must be a number >= 1 (total slots / active slots), got {sparsity!r}"
        )
    if not (isinstance(granularity, (int, float)) and granularity >= 1 and _close_to_int(granularity)):
        raise ConfigError(f"{key}.granularity: must be a whole number >= 1, got {granularity!r}")
    if not (isinstance(shared_fraction, (int, float)) and 0 <= shared_fraction < 1):
        raise ConfigError(f"{key}.shared_fraction: must be in [0, 1), got {shared_fraction!r}")
    if sparsity == 1:
        return 1, 1, 0, 1
    G = int(round(granularity))
    total = sparsity * G
    if not _close_to_int(total):
        raise ConfigError(
            f"{key}.sparsity: sparsity {sparsity:g} x granularity {G} = {total:g} slots is not a whole number"
        )
    shared = shared_fraction * G
    if not _close_to_int(shared):
        raise ConfigError(
            f"{key}.shared_fraction: {shared_fraction:g} x granularity {G} = {shared:g} shared slots "
            "is not a whole number"
        )
    top_k = G - int(round(shared))
    if top_k < 1:
        raise ConfigError(f"{key}.shared_fraction: leaves no routed slot active (top_k = {top_k})")
    return G, int(round(total)), int(round(shared)), top_k


def d_step(base: ModelConfig, granularity: int) -> int:
    """``d_model`` must be a multiple of this: the INT4 group, the head dim, and 8G
    (a slot 4d/G wide is then a multiple of 32)."""
    hd = base.resolved_head_dim
    return math.lcm(SLOT_MULTIPLE, hd, SLOT_MULTIPLE * granularity // FFN_MULT)


def _kv_heads(n_heads: int, ratio: int) -> int:
    """The base's query/KV head ratio where it divides; else the nearest smaller KV count
    that divides n_heads (tiny models have too few heads for the ratio)."""
    want = max(1, n_heads // max(1, ratio))
    return max(c for c in range(1, want + 1) if n_heads % c == 0)


def depth_band(d_model: int) -> tuple[int, int]:
    """``(min, max)`` layers allowed at this width (aspect ratio in [ASPECT_MIN, ASPECT_MAX])."""
    lo = max(MIN_LAYERS, math.ceil(d_model / ASPECT_MAX))
    return lo, max(lo, math.floor(d_model / ASPECT_MIN))


def build(
    base: ModelConfig,
    d_model: int,
    n_layers: int,
    G: int,
    total_slots: int,
    shared_slots: int,
    top_k: int,
    name: str,
) -> ModelConfig:
    """The model of one exact shape (no snapping): the base's attention, norms, RoPE,
    embeddings and router; every layer MoE (or every layer dense when total_slots = 1)."""
    hd = base.resolved_head_dim
    n_heads = d_model // hd
    ratio = base.n_heads // base.n_kv_heads
    ffn = FFN_MULT * d_model
    moe = None
    if total_slots > 1:
        slot = ffn // G
        router = {f: getattr(base.moe, f) for f in ROUTER_FIELDS} if base.moe is not None else PAPER_ROUTER
        moe = MoEConfig(
            n_routed_experts=total_slots - shared_slots,
            expert_hidden=slot,
            top_k=top_k,
            n_shared_experts=1 if shared_slots else 0,
            shared_hidden=shared_slots * slot if shared_slots else 0,
            n_dense_layers=0,
            **router,
        )
    return dataclasses.replace(
        base,
        name=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=_kv_heads(n_heads, ratio),
        head_dim=hd if base.head_dim is not None else None,
        ffn_hidden=ffn,
        moe=moe,
    )


def _grid(base: ModelConfig, step: int, d_max: int, n_layers: int | None) -> tuple[np.ndarray, np.ndarray]:
    ds, ls = [], []
    for d in range(step, d_max + 1, step):
        lo, hi = (n_layers, n_layers) if n_layers else depth_band(d)
        ds += [d] * (hi - lo + 1)
        ls += list(range(lo, hi + 1))
    return np.array(ds, dtype=np.int64), np.array(ls, dtype=np.int64)


def shape_arrays(
    base: ModelConfig, d: np.ndarray, L: np.ndarray, G: int, total: int, shared: int, top_k: int
) -> dict[str, Any]:
    """:func:`mobilemoe.scaling.counts.count` fields of ``build``'s shapes, vectorised over d, L."""
    hd = base.resolved_head_dim
    H = d // hd
    ratio = base.n_heads // base.n_kv_heads
    kv = np.array([_kv_heads(int(h), ratio) for h in H], dtype=np.int64) if len(H) else H
    if base.sliding_window:
        n_local = np.array([sum((i + 1) % base.global_every != 0 for i in range(int(n))) for n in L])
    else:
        n_local = np.zeros_like(L)
    moe = total > 1
    w = FFN_MULT * d // G
    return dict(
        V=base.vocab_size,
        d=d,
        L=L,
        H=H,
        kv=kv,
        hd=hd,
        tied=bool(base.tie_embeddings),
        qk_norm=bool(base.qk_norm),
        n_local=n_local,
        window=base.sliding_window or 0,
        n_moe=L if moe else np.zeros_like(L),
        E=(total - shared) if moe else 0,
        w=w if moe else 0,
        k=top_k if moe else 0,
        hs=shared * w if moe else 0,
        dense_h=FFN_MULT * d,
    )


def make_model(
    base: ModelConfig,
    *,
    active_params: int,
    sparsity: float,
    granularity: int,
    shared_fraction: float,
    n_layers: int | None = None,
    name: str | None = None,
    key: str = "scaling.sweep",
) -> ModelConfig:
    """A model whose active non-embedding parameters are as close as possible to
    ``active_params``, at the given sparsity, granularity and shared fraction (see the
    module docstring for the slot reading and the depth rule). Raises ConfigError naming
    ``key``'s sub-key when the shape is impossible."""
    G, total, shared, top_k = arch_slots(sparsity, granularity, shared_fraction, key)
    if not (isinstance(active_params, (int, float)) and active_params > 0):
        raise ConfigError(f"{key}.active_params: must be > 0, got {active_params!r}")
    if n_layers is not None and (not isinstance(n_layers, int) or n_layers < 1):
        raise ConfigError(f"{key}.n_layers: must be a whole number >= 1, got {n_layers!r}")
    step = d_step(base, G)
    # widest d worth trying: one layer of attention + FFN is already ~14 d^2 active params
    d_max = max(step, step * math.ceil(math.sqrt(active_params / 8.0) / step) + step)
    d, L = _grid(base, step, d_max, n_layers)
    counts = count(shape_arrays(base, d, L, G, total, shared, top_k), base.max_seq_len)
    n = counts["non_embedding_active_params"].astype(np.float64)
    err = np.abs(np.log(n / float(active_params)))
    best = float(err.min())
    if best > math.log(1 + MAX_MISMATCH):
        i = int(err.argmin())
        raise ConfigError(
            f"{key}.active_params: {int(active_params):,} active non-embedding params cannot be reached "
            f"within {MAX_MISMATCH:.0%} at sparsity {sparsity:g}, granularity {G}, shared fraction "
            f"{shared_fraction:g}{f', n_layers {n_layers}' if n_layers else ''} (d_model steps of {step}); "
            f"the nearest shape has {int(n[i]):,} (d_model {int(d[i])}, {int(L[i])} layers)"
        )
    near = np.flatnonzero(err <= best + MATCH_TOLERANCE)
    aspect_err = np.abs(np.log(d[near] / L[near] / ASPECT))
    i = int(near[np.lexsort((err[near], aspect_err))[0]])
    label = name or f"s{sparsity:g}-g{G}-f{shared_fraction:g}-n{int(n[i])}"
    cfg = build(base, int(d[i]), int(L[i]), G, total, shared, top_k, label)
    cfg.validate(f"{key}.model")
    if cfg.moe is not None:
        cfg.moe.validate(f"{key}.model.moe")
    return cfg


def coordinates(model: ModelConfig) -> dict:
    """The scaling-law coordinates of any model (exact inverse of :func:`make_model`).

    Slots are counted in units of the routed expert width w: granularity = 4d / w,
    active slots = top_k + shared width / w, total slots = routed + shared width / w,
    sparsity = total / active, shared fraction = shared slots / active slots. Dense
    models are (1, 1, 0)."""
    c = count_model(model, model.max_seq_len)
    out: dict[str, Any] = {
        "active_params": c["non_embedding_active_params"],
        "total_params": c["non_embedding_params"],
        "sparsity": 1.0,
        "granularity": 1.0,
        "shared_fraction": 0.0,
        "d_model": model.d_model,
        "n_layers": model.n_layers,
    }
    moe = model.moe
    if moe is not None and any(model.is_moe_layer(i) for i in range(model.n_layers)):
        w = moe.expert_hidden
        shared = moe.n_shared_experts * moe.shared_hidden / w
        active = moe.top_k + shared
        out.update(
            sparsity=(moe.n_routed_experts + shared) / active,
            granularity=FFN_MULT * model.d_model / w,
            shared_fraction=shared / active,
        )
    return out

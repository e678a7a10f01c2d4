"""``mobilemoe design``: the architecture a fitted law prefers under a phone's budgets.

    from mobilemoe.scaling.design import design
    out = design(law, params.model, memory_gib=3.0, gflops_per_token=2.5, context=2048)
    out["best"]["model"], out["best"]["predicted_loss"], out["extrapolated"]

Candidates (docs/scaling.md#design): every sparsity in SPARSITIES, granularity in
GRANULARITIES and shared fraction in SHARED_FRACTIONS that makes whole slots
(:func:`mobilemoe.scaling.shapes.arch_slots`), at every snapped width and every depth the
width/depth rule allows (:func:`mobilemoe.scaling.shapes.depth_band`), with the base
model's vocabulary, heads, norms and router. Each is counted in closed form
(:mod:`mobilemoe.scaling.counts`), kept if it fits every budget, and scored by the law.
The law has no depth or vocabulary term, so it ranks shapes only by their coordinates.

Budgets, in the units of ``scaling:`` in params: memory = INT4 g32 bytes of all weights
(GiB, as ``mobilemoe arch``); compute = forward GFLOPs per token at ``context`` or, instead,
active params (embedding included, as ``mobilemoe arch`` reports them); latency = decode
tokens/s predicted as bandwidth / (INT4 weight bytes a token reads + the fp32 KV cache
read at position context/2), the bandwidth measured by the device lab
(``device_decode_bandwidth_gb_s``).

Tokens: ``tokens`` if given, else each candidate at the sweep's median tokens per active
non-embedding parameter (the ladder's own rule). A candidate outside the range the law was
fitted on is extrapolated: the result says so (``extrapolated``, ``extrapolation``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..config import to_dict
from ..config.model import ModelConfig
from ..errors import UserError
from ..model.accounting import GIB
from .counts import count
from .law import predict
from .shapes import arch_slots, build, d_step, depth_band, shape_arrays

SPARSITIES = (1, 2, 4, 8, 16, 32, 64)
GRANULARITIES = (1, 2, 4, 8, 16)
SHARED_FRACTIONS = (0.0, 0.25, 0.5)
D_MODEL_CAP = 16384  # widest model tried (well past the paper's 1280)
REL_TOL = 1e-6  # a coordinate within this of the fitted range's edge is inside it


def architectures() -> list[tuple[float, int, float]]:
    """The (sparsity, granularity, shared fraction) grid, whole slots only, dense once."""
    out: list[tuple[float, int, float]] = [(1.0, 1, 0.0)]
    for S in SPARSITIES[1:]:
        for G in GRANULARITIES:
            for f in SHARED_FRACTIONS:
                try:
                    arch_slots(S, G, f, "design")
                except UserError:
                    continue
                out.append((float(S), G, f))
    return out


def _budget_mask(c: dict[str, Any], b: dict[str, Any]) -> np.ndarray:
    ok = np.ones(np.shape(c["int4_weight_bytes"]), dtype=bool)
    if b.get("memory_gib") is not None:
        ok &= c["int4_weight_bytes"] <= b["memory_gib"] * GIB
    if b.get("gflops_per_token") is not None:
        ok &= c["flops_per_token"] <= b["gflops_per_token"] * 1e9
    if b.get("active_params") is not None:
        ok &= c["active_params"] <= b["active_params"]
    if b.get("decode_tok_s") is not None:
        ok &= c["decode_tok_s"] >= b["decode_tok_s"]
    return ok


def _with_speed(c: dict[str, Any], bandwidth_gbs: Optional[float]) -> dict[str, Any]:
    if bandwidth_gbs is not None:
        c["decode_tok_s"] = bandwidth_gbs * 1e9 / (c["decode_weight_bytes"] + c["decode_kv_bytes"])
    return c


def enumerate_candidates(base: ModelConfig, budgets: dict[str, Any], context: int) -> dict[str, np.ndarray]:
    """Every grid shape whose *narrowest* member at its width fits the budgets (arrays,
    one entry a shape, with its counts and coordinates); ``feasible`` marks those that fit."""
    bw = budgets.get("bandwidth_gbs")
    rows: list[dict[str, Any]] = []
    smallest: dict[str, float] = {}
    for S, G, f in architectures():
        G_, total, shared, top_k = arch_slots(S, G, f, "design")
        step = d_step(base, G_)
        # widths: stop at the first whose shallowest shape breaks a budget (counts grow with d)
        d_all = np.arange(step, D_MODEL_CAP + 1, step, dtype=np.int64)
        lmin = np.array([depth_band(int(d))[0] for d in d_all], dtype=np.int64)
        c_min = _with_speed(
            count(shape_arrays(base, d_all, lmin, G_, total, shared, top_k), context, context // 2), bw
        )
        for k in ("int4_weight_bytes", "flops_per_token", "active_params"):
            smallest[k] = min(smallest.get(k, math.inf), float(c_min[k][0]))
        if "decode_tok_s" in c_min:
            smallest["decode_tok_s"] = max(smallest.get("decode_tok_s", 0.0), float(c_min["decode_tok_s"][0]))
        fits = _budget_mask(c_min, budgets)
        if not fits.any():
            continue
        d_max = int(d_all[np.flatnonzero(fits)[-1]])
        ds: list[int] = []
        ls: list[int] = []
        for width in range(step, d_max + 1, step):
            lo, hi = depth_band(width)
            ds += [width] * (hi - lo + 1)
            ls += range(lo, hi + 1)
        d_arr = np.array(ds, dtype=np.int64)
        L_arr = np.array(ls, dtype=np.int64)
        c = _with_speed(
            count(shape_arrays(base, d_arr, L_arr, G_, total, shared, top_k), context, context // 2), bw
        )
        c.update(d_model=d_arr, n_layers=L_arr)
        for k, v in (("sparsity", S), ("granularity", G_), ("shared_fraction", f)):
            c[k] = np.full(len(d_arr), v)
        rows.append(c)
    if not rows:
        return {"smallest": smallest}  # type: ignore[dict-item]
    out = {k: np.concatenate([np.broadcast_to(r[k], np.shape(r["d_model"])) for r in rows]) for k in rows[0]}
    out["feasible"] = _budget_mask(out, budgets)
    out["smallest"] = smallest  # type: ignore[assignment]
    return out


def tokens_per_param(law: dict) -> float:
    """The sweep's median training tokens per active non-embedding parameter."""
    points = law.get("points") or []
    if points:
        return float(np.median([p["tokens"] / p["active_params"] for p in points]))
    lo, hi = law["ranges"]["tokens_per_param"]
    return math.sqrt(lo * hi)


def _scores(law: dict, c: dict[str, np.ndarray], tokens: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    N = c["non_embedding_active_params"].astype(np.float64)
    D = np.full(len(N), float(tokens)) if tokens is not None else N * tokens_per_param(law)
    loss = predict(
        law,
        active_params=N,
        tokens=D,
        sparsity=c["sparsity"],
        granularity=c["granularity"],
        shared_fraction=c["shared_fraction"],
    )
    return np.asarray(loss), D


def extrapolation(law: dict, coords: dict[str, float]) -> list[dict]:
    """The coordinates outside the law's fitted ranges: [{axis, value, range}]."""
    out = []
    ranges = dict(law["ranges"])
    if not law.get("tokens_term", True):
        ranges.pop("tokens", None)  # the law speaks of tokens only through the ladder's rule
        coords = coords | {"tokens_per_param": coords["tokens"] / coords["active_params"]}
    else:
        ranges.pop("tokens_per_param", None)
    for axis, (lo, hi) in ranges.items():
        v = coords.get(axis)
        if v is not None and not (lo * (1 - REL_TOL) <= v <= hi * (1 + REL_TOL)):
            out.append({"axis": axis, "value": v, "range": [lo, hi]})
    return out


def _describe(base: ModelConfig, law: dict, c: dict, i: int, loss: float, D: float, context: int) -> dict:
    from ..model.accounting import account

    S, G, f = float(c["sparsity"][i]), int(c["granularity"][i]), float(c["shared_fraction"][i])
    G_, total, shared, top_k = arch_slots(S, G, f, "design")
    name = f"design-s{S:g}-g{G_}-f{f:g}"
    cfg = build(base, int(c["d_model"][i]), int(c["n_layers"][i]), G_, total, shared, top_k, name)
    acc = account(cfg, context).to_dict()
    coords = {
        "active_params": int(c["non_embedding_active_params"][i]),
        "total_params": int(c["non_embedding_params"][i]),
        "tokens": float(D),
        "sparsity": S,
        "granularity": float(G_),
        "shared_fraction": f,
        "d_model": int(c["d_model"][i]),
        "n_layers": int(c["n_layers"][i]),
    }
    out = {
        "model": to_dict(cfg),
        "accounting": acc | {"int4_weight_gib": acc["int4_weight_bytes"] / GIB},
        "predicted_loss": float(loss),
        "coordinates": coords,
        "decode_bytes_per_token": int(c["decode_weight_bytes"][i] + c["decode_kv_bytes"][i]),
        "extrapolation": extrapolation(law, coords),
    }
    if "decode_tok_s" in c:
        out["predicted_decode_tok_s"] = float(c["decode_tok_s"][i])
    return out


def _frontier(mem: np.ndarray, loss: np.ndarray, limit: int = 200) -> list[list[float]]:
    """The Pareto points (memory GiB, loss): lower loss than every smaller model."""
    order = np.lexsort((loss, mem))
    pts, best = [], math.inf
    for i in order:
        if loss[i] < best:
            best = float(loss[i])
            pts.append([float(mem[i]) / GIB, best])
    step = max(1, len(pts) // limit)
    return pts[::step] + ([pts[-1]] if pts and (len(pts) - 1) % step else [])


def design(
    law: dict,
    base: ModelConfig,
    *,
    memory_gib: float,
    gflops_per_token: float | None = None,
    active_params: int | None = None,
    tokens: int | None = None,
    decode_tok_s: float | None = None,
    bandwidth_gbs: float | None = None,
    context: int = 2048,
    top: int = 5,
) -> dict:
    """The shape of least predicted loss within the budgets, the best shapes of the next
    ``top`` other architectures, the law used, and whether it had to extrapolate.
    UserError for an infeasible budget (naming the smallest feasible ones)."""
    if memory_gib is None or memory_gib <= 0:
        raise UserError(f"design: --memory-gib must be > 0, got {memory_gib}")
    if gflops_per_token is not None and active_params is not None:
        raise UserError("design: give --gflops-per-token or --active-params, not both")
    for flag, v in (
        ("--gflops-per-token", gflops_per_token),
        ("--active-params", active_params),
        ("--tokens", tokens),
        ("--decode-tok-s", decode_tok_s),
        ("--bandwidth-gbs", bandwidth_gbs),
    ):
        if v is not None and not v > 0:
            raise UserError(f"design: {flag} must be > 0, got {v}")
    if decode_tok_s is not None and bandwidth_gbs is None:
        raise UserError(
            "design: --decode-tok-s needs the target's decode bandwidth: --bandwidth-gbs GB/s, or --profile "
            "FILE with a device_profile result (device_decode_bandwidth_gb_s)"
        )
    budgets = dict(
        memory_gib=memory_gib,
        gflops_per_token=gflops_per_token,
        active_params=active_params,
        decode_tok_s=decode_tok_s,
        bandwidth_gbs=bandwidth_gbs,
        context=context,
        tokens=tokens,
    )
    c = enumerate_candidates(base, budgets, context)
    if "feasible" not in c or not c["feasible"].any():
        s = c["smallest"]
        parts = [
            f"the smallest valid model needs {s['int4_weight_bytes'] / GIB:.4g} GiB of INT4 weights",
            f"{s['flops_per_token'] / 1e9:.4g} GFLOPs/token at context {context}",
            f"{int(s['active_params']):,} active params",
        ]
        if "decode_tok_s" in s:
            parts.append(f"and decodes at most {s['decode_tok_s']:.4g} tok/s at {bandwidth_gbs} GB/s")
        raise UserError(
            "design: no architecture fits these budgets; "
            + ", ".join(parts)
            + f" (vocabulary {base.vocab_size:,}, head dim {base.resolved_head_dim}). Raise the budgets."
        )
    loss, D = _scores(law, c, tokens)
    feasible = np.flatnonzero(c["feasible"])
    order = feasible[np.lexsort((c["int4_weight_bytes"][feasible], loss[feasible]))]
    best_i = int(order[0])
    picked, seen = [], set()
    for i in order:
        arch = (float(c["sparsity"][i]), int(c["granularity"][i]), float(c["shared_fraction"][i]))
        if arch not in seen:
            seen.add(arch)
            picked.append(int(i))
        if len(picked) > top:
            break
    best = _describe(base, law, c, best_i, loss[best_i], D[best_i], context)
    candidates = [_describe(base, law, c, i, loss[i], D[i], context) for i in picked[1:]]
    ok = _budget_mask(c, budgets | {"memory_gib": None})  # the frontier spans memory: every other budget
    dense = ok & (c["sparsity"] == 1)
    moe = ok & (c["sparsity"] > 1)
    return {
        "best": best,
        "candidates": candidates,
        "law": law_summary(law),
        "extrapolated": bool(best["extrapolation"]),
        "budgets": budgets,
        "n_candidates": int(len(c["feasible"])),
        "n_feasible": int(len(feasible)),
        "frontier": {
            "dense": _frontier(c["int4_weight_bytes"][dense], loss[dense]),
            "moe": _frontier(c["int4_weight_bytes"][moe], loss[moe]),
        },
    }


def law_summary(law: dict) -> dict:
    """What a design says about the fit it used."""
    return {
        "form": law["form"],
        "params": law["params"],
        "ranges": law["ranges"],
        "source": law.get("source"),
        "n_points": law.get("n_points"),
        "loo_median_rel_err": law.get("loo_median_rel_err"),
        "tokens_per_param": tokens_per_param(law),
    }

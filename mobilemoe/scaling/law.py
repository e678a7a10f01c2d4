"""The on-device MoE scaling law: its form, a robust fit, and how well it predicts.

    from mobilemoe.scaling.law import fit, predict
    law = fit(records)                       # one dict per sweep point (the sweep's records)
    law["loo_median_rel_err"], law["intervals"]["alpha"]
    predict(law, active_params=2e5, tokens=4e6, sparsity=8, granularity=8, shared_fraction=0.5)

The form (docs/scaling.md#the-law says why), in N = active non-embedding parameters,
D = training tokens, S = sparsity, G = granularity, f = shared fraction::

    L = E + A * N^-alpha * S^-delta * (1 + g*G^-gamma)/(1 + g) * exp(sigma*f) + B * D^-beta

Krajewski et al.'s fine-grained law (its granularity factor, normalised to 1 at G = 1,
so a dense model is the Chinchilla law) times an effective-experts factor S^-delta in the
spirit of Ludziejewski et al., and a one-parameter shared-expert factor. When the sweep's
tokens are a fixed multiple of N (a ladder rule) D carries no information of its own:
the token term is then dropped (absorbed into E, A, alpha) and the law holds at the
sweep's tokens-per-parameter rule, which the result says (``tokens_term: false``). An axis
the sweep does not vary has its parameters fixed (g = gamma = 0, sigma = 0, delta = 0).

Fitting: Huber loss (delta = HUBER_DELTA) on log-loss residuals, bounded parameters
(scipy's ``least_squares``, trf), the best of many random starts. Reported: R^2 on the
loss, leave-one-out relative error of every point and of a constant predictor (the mean
of the others), bootstrap percentile intervals of every parameter, and an extrapolation
test (fit on the smaller half of N, predict the larger half).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import UserError

MARGIN = 3  # points beyond the free parameters: LOO and the bootstrap need slack to mean anything
# Free parameters: E, A, alpha always; delta, (g, gamma), sigma when the sweep varies sparsity,
# granularity, shared fraction; (B, beta) when tokens vary apart from N. A fit needs
# free + MARGIN ok points: 10 for the usual sweep (7 free), 12 with the token term.
MIN_POINTS = 3 + MARGIN  # the fewest ok points any fit accepts (a dense-only sweep)
SWEEP_MIN_POINTS = 7 + MARGIN  # what a sweep varying sparsity, granularity and shared fraction needs
HUBER_DELTA = 0.01  # on log-loss: ~1%, the run-to-run noise of tiny runs; larger misses count linearly
TOKENS_COLLINEAR = 0.05  # std of log(D/N) below this: D is a rule of N, not an axis of its own
AXES = ("active_params", "tokens", "sparsity", "granularity", "shared_fraction")

# name -> (lower, upper) bounds; A, B, E are fitted through their logs.
BOUNDS: dict[str, tuple[float, float]] = {
    "log_E": (math.log(0.05), math.inf),  # upper bound set per fit: below the smallest loss
    "log_A": (-10.0, 30.0),
    "alpha": (0.02, 1.5),
    "log_B": (-10.0, 30.0),
    "beta": (0.02, 1.5),
    "delta": (-0.5, 1.5),  # negative: sparsity hurts (the data may say so)
    "g": (0.0, 30.0),
    "gamma": (0.0, 3.0),
    "sigma": (-3.0, 3.0),
}
# where random starts are drawn (inside the bounds, where losses of LMs live)
START_RANGES: dict[str, tuple[float, float]] = {
    "log_A": (0.0, 10.0),
    "alpha": (0.05, 0.8),
    "log_B": (0.0, 10.0),
    "beta": (0.05, 0.8),
    "delta": (0.0, 0.5),
    "g": (0.0, 3.0),
    "gamma": (0.1, 1.5),
    "sigma": (-1.0, 1.0),
}
FORM_FULL = "L = E + A*N^-alpha * S^-delta * (1 + g*G^-gamma)/(1 + g) * exp(sigma*f) + B*D^-beta"
FORM_NO_TOKENS = (
    "L = E + A*N^-alpha * S^-delta * (1 + g*G^-gamma)/(1 + g) * exp(sigma*f)  "
    "(at the sweep's tokens-per-parameter rule)"
)
FIXED_VALUE = {"log_B": -math.inf, "beta": 0.0, "delta": 0.0, "g": 0.0, "gamma": 0.0, "sigma": 0.0}


def _terms(p: dict[str, float], N, D, S, G, f):
    N, D, S, G, f = (np.asarray(x, dtype=np.float64) for x in (N, D, S, G, f))
    phi = (1.0 + p["g"] * G ** -p["gamma"]) / (1.0 + p["g"])
    model = np.exp(p["log_A"] - p["alpha"] * np.log(N) - p["delta"] * np.log(S) + p["sigma"] * f) * phi
    data = np.exp(p["log_B"] - p["beta"] * np.log(D)) if np.isfinite(p["log_B"]) else 0.0 * N
    return np.exp(p["log_E"]) + model + data


def predict(law: dict, *, active_params, tokens, sparsity, granularity, shared_fraction):
    """Predicted validation loss (a float, or an array where the inputs are arrays)."""
    p = {k: float(v) for k, v in law["raw_params"].items()}
    out = _terms(p, active_params, tokens, sparsity, granularity, shared_fraction)
    return float(out) if np.ndim(out) == 0 else out


# -- fitting ------------------------------------------------------------------------------------


class _Problem:
    """The free parameters of one fit and their bounds, over one set of points."""

    def __init__(self, X: np.ndarray, y: np.ndarray, free: list[str]):
        self.X, self.logy, self.free = X, np.log(y), free
        lo = [BOUNDS[n][0] for n in free]
        hi = [BOUNDS[n][1] for n in free]
        hi[free.index("log_E")] = math.log(0.999 * float(y.min()))
        self.lo, self.hi = np.array(lo), np.array(hi)

    def params(self, theta: np.ndarray) -> dict[str, float]:
        p = dict(FIXED_VALUE)
        p.update(zip(self.free, (float(t) for t in theta)))
        return p

    def residuals(self, theta: np.ndarray, X: np.ndarray | None = None, logy: np.ndarray | None = None):
        X = self.X if X is None else X
        pred = _terms(self.params(theta), *X)
        return np.log(np.maximum(pred, 1e-12)) - (self.logy if logy is None else logy)

    def jacobian(self, theta: np.ndarray, X: np.ndarray | None = None, logy: np.ndarray | None = None):
        """d residual / d theta, analytically (finite differences make the fit 5x slower)."""
        X = self.X if X is None else X
        p = self.params(theta)
        N, D, S, G, f = X
        lnN, lnD, lnS, lnG = np.log(N), np.log(D), np.log(S), np.log(G)
        Gg = G ** -p["gamma"]
        phi = (1.0 + p["g"] * Gg) / (1.0 + p["g"])
        M = np.exp(p["log_A"] - p["alpha"] * lnN - p["delta"] * lnS + p["sigma"] * f) * phi
        T = np.exp(p["log_B"] - p["beta"] * lnD) if np.isfinite(p["log_B"]) else 0.0 * N
        pred = np.exp(p["log_E"]) + M + T
        columns = {
            "log_E": np.exp(p["log_E"]) + 0.0 * N,
            "log_A": M,
            "alpha": -lnN * M,
            "delta": -lnS * M,
            "sigma": f * M,
            "g": M / phi * (Gg - 1.0) / (1.0 + p["g"]) ** 2,
            "gamma": M / phi * (-p["g"] * lnG * Gg) / (1.0 + p["g"]),
            "log_B": T,
            "beta": -lnD * T,
        }
        return np.stack([columns[n] for n in self.free], axis=1) / np.maximum(pred, 1e-12)[:, None]

    def start(self, rng: np.random.Generator) -> np.ndarray:
        theta = []
        for name, lo, hi in zip(self.free, self.lo, self.hi):
            if name == "log_E":
                theta.append(rng.uniform(math.log(0.3) if hi > math.log(0.6) else lo, hi - 0.05))
            else:
                a, b = START_RANGES[name]
                theta.append(rng.uniform(max(a, lo), min(b, hi)))
        return np.clip(np.array(theta), self.lo, self.hi)


def _solve(prob: _Problem, starts: Sequence[np.ndarray], X=None, logy=None) -> tuple[np.ndarray, float]:
    from scipy.optimize import least_squares

    best, best_cost = None, math.inf
    for theta0 in starts:
        try:
            res = least_squares(
                prob.residuals,
                np.clip(theta0, prob.lo + 1e-9, prob.hi - 1e-9),
                jac=prob.jacobian,
                bounds=(prob.lo, prob.hi),
                loss="huber",
                f_scale=HUBER_DELTA,
                method="trf",
                args=(X, logy) if X is not None else (),
                max_nfev=400,
                x_scale="jac",
            )
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(res.cost) and res.cost < best_cost:
            best, best_cost = res.x, float(res.cost)
    if best is None:
        raise UserError("scaling fit: every start of the optimiser failed (are the losses finite and > 0?)")
    return best, best_cost


def _fit_points(X, y, free, rng, n_starts, warm: np.ndarray | None = None) -> tuple[_Problem, np.ndarray]:
    prob = _Problem(X, y, free)
    starts = ([warm] if warm is not None else []) + [prob.start(rng) for _ in range(n_starts)]
    theta, _ = _solve(prob, starts)
    return prob, theta


def _natural(p: dict[str, float]) -> dict[str, float]:
    """Fitted parameters as a reader wants them: E, A, B instead of their logs."""
    out = {}
    for k, v in p.items():
        if k.startswith("log_"):
            out[k[4:]] = math.exp(v) if math.isfinite(v) else 0.0
        else:
            out[k] = v
    return out


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(ok, excluded)``: points the fit can use, and the rest with their reasons."""
    ok, excluded = [], []
    for i, r in enumerate(records):
        name = str(r.get("name") or f"point{i}")
        status = r.get("status", "ok")
        loss = r.get("val_loss")
        if status != "ok":
            excluded.append({"name": name, "reason": f"{status}: {r.get('reason') or 'no reason recorded'}"})
        elif not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss <= 0:
            excluded.append({"name": name, "reason": f"no finite positive val_loss ({loss!r})"})
        elif missing := [a for a in AXES if not isinstance(r.get(a), (int, float)) or not r[a] > -1]:
            excluded.append({"name": name, "reason": f"missing coordinates: {', '.join(missing)}"})
        else:
            ok.append(r)
    return ok, excluded


def _design(points: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    X = np.array([[float(r[a]) for a in AXES] for r in points]).T  # (5, n): N, D, S, G, f
    y = np.array([float(r["val_loss"]) for r in points])
    return X, y


def free_parameters(X: np.ndarray) -> tuple[list[str], dict[str, str]]:
    """The parameters these points can determine, and why the others are fixed."""
    N, D, S, G, f = X
    free = ["log_E", "log_A", "alpha"]
    fixed: dict[str, str] = {}
    if np.std(np.log(D / N)) < TOKENS_COLLINEAR:
        fixed["B, beta"] = "tokens are a fixed multiple of N in this sweep: no token term"
    else:
        free += ["log_B", "beta"]
    if np.ptp(S) == 0:
        fixed["delta"] = "sparsity does not vary"
    else:
        free.append("delta")
    if np.ptp(G) == 0:
        fixed["g, gamma"] = "granularity does not vary"
    else:
        free += ["g", "gamma"]
    if np.ptp(f) == 0:
        fixed["sigma"] = "shared fraction does not vary"
    else:
        free.append("sigma")
    return free, fixed


def _rel_err(pred, obs) -> np.ndarray:
    return np.abs(np.asarray(pred) - obs) / obs


def _range(values) -> list[float]:
    return [float(np.min(values)), float(np.max(values))]


def fit(records: list[dict], *, seed: int = 0, n_starts: int = 12, n_bootstrap: int = 100) -> dict:
    """Fit the law to a sweep's records (see the module docstring); a JSON-able dict.

    Non-ok points (failed, diverged, no loss) are left out and listed under ``excluded``.
    Fewer ok points than the free parameters + MARGIN (SWEEP_MIN_POINTS for a sweep that
    varies every axis, never fewer than MIN_POINTS) is a UserError naming how many it needs."""
    ok, excluded = split_records(records)
    if not ok:
        raise UserError(
            f"scaling fit: no usable sweep points ({len(excluded)} excluded); it needs at least "
            f"{SWEEP_MIN_POINTS} ({MIN_POINTS} if only the size varies)"
        )
    X, y = _design(ok)
    free, fixed = free_parameters(X)
    needed = len(free) + MARGIN
    if len(ok) < needed:
        raise UserError(
            f"scaling fit: {len(ok)} usable sweep points, the law needs at least {needed} "
            f"({len(free)} free parameters + {MARGIN}); {len(excluded)} excluded. Add points to the sweep."
        )
    names = [str(r.get("name") or f"point{i}") for i, r in enumerate(ok)]
    rng = np.random.default_rng(seed)
    prob, theta = _fit_points(X, y, free, rng, n_starts)
    params = prob.params(theta)
    pred = _terms(params, *X)
    r2 = 1.0 - float(np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300))

    # leave-one-out: refit without each point, from the full fit (its nearest good start)
    loo = np.empty(len(y))
    const = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        p_i, t_i = _fit_points(X[:, keep], y[keep], free, rng, 0, warm=theta)
        loo[i] = _rel_err(_terms(p_i.params(t_i), *X[:, i : i + 1])[0], y[i])
        const[i] = _rel_err(y[keep].mean(), y[i])

    # bootstrap: resample points, refit; percentile intervals of every free parameter
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if len(set(idx.tolist())) < len(free):
            continue
        p_b, t_b = _fit_points(X[:, idx], y[idx], free, rng, 1, warm=theta)
        samples.append(_natural(p_b.params(t_b)))
    intervals = {}
    for name in (n.removeprefix("log_") for n in free):
        vals = np.array([s[name] for s in samples])
        if len(vals):
            intervals[name] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]

    D_over_N = X[1] / X[0]
    law: dict[str, Any] = {
        "form": FORM_FULL if "beta" in free else FORM_NO_TOKENS,
        "tokens_term": "beta" in free,
        "params": _natural(params),
        "raw_params": params,
        "free": free,
        "fixed": fixed,
        "intervals": intervals,
        "n_bootstrap": len(samples),
        "r2": r2,
        "loo_median_rel_err": float(np.median(loo)),
        "loo_max_rel_err": float(np.max(loo)),
        "loo_rel_err": dict(zip(names, (float(e) for e in loo))),
        "loo_const_median_rel_err": float(np.median(const)),
        "n_points": len(ok),
        "min_points": needed,
        "loss_spread": float(np.ptp(y)),
        "loss_range": _range(y),
        "extrapolation": _extrapolation(X, y, free, rng, n_starts),
        "excluded": excluded,
        "ranges": {a: _range(X[i]) for i, a in enumerate(AXES)} | {"tokens_per_param": _range(D_over_N)},
        "huber_delta": HUBER_DELTA,
        "seed": seed,
        "points": [
            {"name": n, **{a: float(X[j, i]) for j, a in enumerate(AXES)}, "val_loss": float(y[i])}
            for i, n in enumerate(names)
        ],
    }
    return law


def _extrapolation(X, y, free, rng, n_starts) -> dict:
    """Fit on the points with N at or below the median N, predict the rest."""
    N = X[0]
    cut = float(np.median(np.unique(N)))
    small, large = N <= cut, N > cut
    out: dict[str, Any] = {
        "fit_on": {"n_points": int(small.sum()), "active_params": _range(N[small])},
        "predict": {"n_points": int(large.sum()), "active_params": _range(N[large]) if large.any() else None},
    }
    Xs = X[:, small]
    free_s, _ = free_parameters(Xs)
    # an axis fixed on the small half but free on all would be extrapolated blind; keep the small half's set
    if small.sum() < len(free_s) + 1 or not large.any():
        out.update(median_rel_err=None, max_rel_err=None, skipped="too few points in one half")
        return out
    prob, theta = _fit_points(Xs, y[small], free_s, rng, n_starts)
    err = _rel_err(_terms(prob.params(theta), *X[:, large]), y[large])
    out.update(median_rel_err=float(np.median(err)), max_rel_err=float(np.max(err)))
    return out

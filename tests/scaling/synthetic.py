"""Synthetic sweep records from a known law + noise, shaped like the sweep's records."""

from __future__ import annotations

import math

import numpy as np

# A law of the form mobilemoe.scaling.law fits, with losses where tiny LMs live (3.5-5.5 nats
# at vocab 4096): sparsity, granularity and shared experts each help a little.
TRUTH = {
    "log_E": math.log(2.0),
    "log_A": math.log(60.0),
    "alpha": 0.30,
    "log_B": math.log(40.0),
    "beta": 0.25,
    "delta": 0.15,
    "g": 0.6,
    "gamma": 0.7,
    "sigma": -0.3,
}
SIZES = (4e4, 1e5, 2.5e5, 6e5, 1.5e6)
ARCHS = [(1, 1, 0.0), (4, 4, 0.25), (8, 8, 0.5), (8, 2, 0.0), (16, 8, 0.25), (4, 1, 0.0)]


def records(
    truth=TRUTH, sizes=SIZES, archs=ARCHS, tokens_per_param=(20.0,), noise=0.005, seed=0
) -> list[dict]:
    from mobilemoe.scaling.law import _terms

    rng = np.random.default_rng(seed)
    out = []
    for N in sizes:
        for S, G, f in archs:
            for tpp in tokens_per_param:
                # shapes snap N to nearby values: jitter it as make_model would
                n = int(N * math.exp(rng.uniform(-0.1, 0.1)))
                D = int(n * tpp)
                loss = float(_terms(truth, n, D, S, G, f)) * math.exp(rng.normal(0, noise))
                out.append(
                    {
                        "name": f"n{N:.0e}-s{S}-g{G}-f{f}-t{tpp:g}",
                        "status": "ok",
                        "reason": None,
                        "active_params": n,
                        "total_params": int(n * (1 + 0.8 * (S - 1))),
                        "sparsity": float(S),
                        "granularity": float(G),
                        "shared_fraction": f,
                        "tokens": D,
                        "val_loss": loss,
                        "model": {},
                        "accounting": {},
                        "mlflow_run_id": None,
                    }
                )
    return out

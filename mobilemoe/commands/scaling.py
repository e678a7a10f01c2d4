"""``mobilemoe scaling fit``: the scaling law fitted to the latest sweep (docs/scaling.md#the-fit).

    mobilemoe scaling fit [--json] [--records FILE]

The sweep's points come from the params' latest sweep (its MLflow child runs and the stage
cache, through ``mobilemoe.pipeline.scaling.latest_records``) or from ``--records FILE`` (a
JSON list of point records, or ``{"records": [...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import add_config_args, load_config


def add_parser(sub) -> None:
    p = sub.add_parser("scaling", help="the on-device MoE scaling law: fit it to the latest sweep")
    actions = p.add_subparsers(dest="scaling_command", metavar="ACTION", required=True)
    f = actions.add_parser("fit", help="fit the law to the sweep's points and report how well it predicts")
    add_config_args(f)
    add_source_args(f, law=False)
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.add_argument("--seed", type=int, default=0, help="seed of the random starts and the bootstrap")
    f.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals")
    f.set_defaults(func=run_fit)


def add_source_args(p, law: bool) -> None:
    p.add_argument("--records", help="a JSON file of sweep point records (default: the latest sweep)")
    if law:
        p.add_argument("--law", help="a fitted law (the JSON of `mobilemoe scaling fit --json`)")


def read_json(path: str, what: str):
    from ..errors import UserError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file ({what})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON file ({what}): {e}") from None


def load_records(args, params) -> tuple[list[dict], str]:
    """The sweep's point records and where they came from."""
    from ..errors import UserError

    if args.records:
        data = read_json(args.records, "sweep records")
        records = data.get("records") if isinstance(data, dict) else data
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise UserError(f'{args.records}: expected a JSON list of point records or {{"records": [...]}}')
        return records, args.records
    try:
        from ..pipeline.scaling import latest_records  # type: ignore[import-not-found,attr-defined,unused-ignore]
    except ImportError:
        raise UserError(
            "no sweep to read: this checkout cannot read the flow's sweep records yet; pass --records FILE"
        ) from None
    records = latest_records(params)
    if not records:
        raise UserError(
            "no sweep points recorded for these params: run the flow's scaling step "
            "(python flows/full_repro.py run) or pass --records FILE"
        )
    return records, "latest sweep (MLflow child runs of the scaling stage)"


def fit_records(records: list[dict], source: str, seed: int = 0, n_bootstrap: int = 100) -> dict:
    from ..scaling.law import fit

    law = fit(records, seed=seed, n_bootstrap=n_bootstrap)
    law["source"] = source
    law["mlflow_run_ids"] = [r["mlflow_run_id"] for r in records if r.get("mlflow_run_id")]
    return law


def run_fit(args) -> int:
    from ..errors import UserError

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    params = load_config(args)
    records, source = load_records(args, params)
    law = fit_records(records, source, args.seed, args.bootstrap)
    if args.json:
        print(json.dumps(law))
        return 0
    print(f"law      {law['form']}")
    print(f"source   {source} ({law['n_points']} points used, {len(law['excluded'])} excluded)")
    for name, value in law["params"].items():
        lo_hi = law["intervals"].get(name)
        ci = f"  95% [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else "  (fixed)"
        print(f"  {name:<6} {value:>10.4g}{ci}")
    for what, why in law["fixed"].items():
        print(f"  fixed {what}: {why}")
    ex = law["extrapolation"]
    rows = [
        ("r2", f"{law['r2']:.4f}"),
        ("loo_median_rel_err", f"{law['loo_median_rel_err']:.2%} (max {law['loo_max_rel_err']:.2%})"),
        ("loo_const_median_rel_err", f"{law['loo_const_median_rel_err']:.2%} (the mean loss as predictor)"),
        ("n_points", str(law["n_points"])),
        ("loss_spread", f"{law['loss_spread']:.4g} nats (max - min)"),
        (
            "extrapolation",
            f"fit on N <= {ex['fit_on']['active_params'][1]:,.0f} ({ex['fit_on']['n_points']} points): "
            + (
                f"median {ex['median_rel_err']:.2%}, max {ex['max_rel_err']:.2%} on the larger half"
                if ex.get("median_rel_err") is not None
                else f"skipped ({ex.get('skipped')})"
            ),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for e in law["excluded"]:
        print(f"excluded {e['name']}: {e['reason']}")
    print("leave-one-out relative error per point:")
    for name, err in sorted(law["loo_rel_err"].items(), key=lambda kv: -kv[1]):
        print(f"  {err:7.2%}  {name}")
    return 0

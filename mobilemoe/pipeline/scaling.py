"""The flow's scaling stage: the sweep's points, the fitted law, the design it drives.

Three functions, one per flow step (docs/scaling.md#the-sweep-in-the-flow):

* :func:`scaling_plan` (in ``curate``, after the data exists): the ladder of
  ``scaling.sweep`` as foreach groups, and the stage's MLflow run (``scaling``) that the
  points' runs nest under;
* :func:`scaling_points` (one ``scaling`` foreach task per group): each point is found in
  the stage cache by key (the trainer's weight settings of the point, the data version, the
  training code) or trained now by the project's trainer, in its own MLflow child run
  tagged with its architecture and ``arch`` accounting (and the whole record, which
  ``mobilemoe scaling fit`` reads back). A point that diverges is kept with that reason; one
  that fails otherwise is recorded FAILED and redone by the next run. Neither stops the
  sweep;
* :func:`scaling_fit` (the join): the law over the ok points (skipped, with the reason, when
  there are too few), the design under ``scaling``'s budgets, the plots, the paper check;
  cached by the records it fitted.

:func:`with_design` hands the designed model to the stages after it when ``model.source:
scaling``; every later stage's run then carries ``mobilemoe.model_source_run_id``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import lineage as L
from ..config import Params, flat_params, to_dict
from ..errors import UserError
from ..io import write_json_atomic
from .cache import digest, load_cached, save_cached, stage_folder, stage_key
from .refs import Context, ScalingPointRef, ScalingRef
from .slots import cpu_slot, slot_folder
from .stages import _run_cached, ensure_data
from .tracking import MlflowSink, flatten_numbers, stage_tags

POINT_STAGE = "scaling_point"
STAGE = "scaling"
RECORD_TAG = "mobilemoe.scaling.record"  # a point run's record (JSON), the fit's source
POINT_TAG = "mobilemoe.scaling.point"
STATUS_TAG = "mobilemoe.scaling.status"
FIT_CODE = (  # the code a fit's cache key covers: the law, the design, the check, the figures
    "mobilemoe.scaling.law",
    "mobilemoe.scaling.design",
    "mobilemoe.scaling.check",
    "mobilemoe.scaling.plots",
)


@dataclass(frozen=True)
class SweepPlan:
    """What the flow's foreach fans out: the stage's MLflow run and the groups of points."""

    run_id: str
    groups: list  # [[SweepPoint as a dict, ...], ...] ([[]] when there is no sweep)
    n_points: int
    train_tokens: int


def _train_tokens(params: Params, root: str) -> int:
    from ..data.paths import data_paths

    meta = data_paths(params, root=root).root / "shards" / "pretrain" / "meta.json"
    try:
        return int(json.loads(meta.read_text())["splits"]["train"]["tokens"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{meta}: cannot read the pretraining split's size ({e}); rerun `dvc repro`"
        ) from None


def scaling_plan(ctx: Context) -> SweepPlan:
    """Expand ``scaling.sweep`` into foreach groups and open the stage's MLflow run."""
    from ..scaling.sweep import groups, plan

    params = ctx.parsed
    tokens = _train_tokens(params, ctx.root)
    points = plan(params, tokens)
    tracker = L.Tracker(params, Path(ctx.root))
    code = L.code_version(Path(ctx.root), FIT_CODE)
    run_id = tracker.start_run(
        STAGE, stage_tags(ctx, STAGE, "", None, code), parent_run_id=ctx.pipeline_run_id
    )
    tracker.log_params(run_id, flat_params(params, "scaling"))
    sweep = params.scaling.sweep
    parts = groups(points, sweep.points_per_task) if sweep else []
    return SweepPlan(
        run_id=run_id,
        groups=[[p.to_dict() for p in g] for g in parts] or [[]],
        n_points=len(points),
        train_tokens=tokens,
    )


# --- the points -------------------------------------------------------------------------
def _slots(params: Params) -> int:
    sweep = params.scaling.sweep
    per_point = sweep.threads if sweep else params.runtime.threads
    return max(params.runtime.parallel_workers, params.runtime.threads // per_point)


def scaling_points(ctx: Context, sweep_plan: SweepPlan, group: list[dict]) -> list[dict]:
    """Train (or reuse) one foreach task's points; their records in order."""
    from ..scaling.sweep import SweepPoint

    params = ctx.parsed
    if group:
        ensure_data(ctx)  # a task on another machine pulls the run's data version through DVC
    tracker = L.Tracker(params, Path(ctx.root))
    nested = dataclasses.replace(ctx, pipeline_run_id=sweep_plan.run_id)  # point runs nest in the stage's
    out = []
    for raw in group:
        point = SweepPoint.from_dict(raw)
        ref = _point(nested, tracker, params, point)
        out.append({**ref.record, "mlflow_run_id": ref.run_id, "reused": ref.reused})
    return out


def _point(ctx: Context, tracker: L.Tracker, params: Params, point) -> ScalingPointRef:
    from ..scaling.sweep import point_params

    pp = point_params(params, point)
    code = ctx.code_for("pretrain")
    key = stage_key("pretrain", pp, None, ctx.data_version or {}, code)
    folder = stage_folder(ctx.root, params, POINT_STAGE, key)
    tags = {
        **stage_tags(ctx, POINT_STAGE, key, None, code),
        POINT_TAG: point.name,
        **{f"mobilemoe.scaling.{k}": v for k, v in point.coordinates.items()},
    }
    ref = _run_cached(
        ctx,
        tracker,
        ScalingPointRef,
        POINT_STAGE,
        key,
        folder,
        tags,
        {**flat_params(pp, "model"), **flat_params(pp, "pretrain")},
        lambda run_id: _train_point(params, pp, point, key, folder, tracker, run_id, ctx.root),
        check=lambda ref: ref.record.get("status") != "ok" or _intact(ref),
        keep=lambda ref: ref.record.get("status") in ("ok", "diverged"),
        run_name=f"{POINT_STAGE} {point.name}",
    )
    record = {**ref.record, "mlflow_run_id": ref.run_id}
    tracker.set_tags(
        ref.run_id, {RECORD_TAG: json.dumps(record, sort_keys=True), STATUS_TAG: record["status"]}
    )
    return dataclasses.replace(ref, record=record)


def _intact(ref: ScalingPointRef) -> bool:
    from ..checkpoint import checkpoint_sha256

    return ref.checkpoint is not None and checkpoint_sha256(ref.checkpoint) == ref.record.get(
        "checkpoint_sha256"
    )


def _train_point(
    params: Params, pp: Params, point, key: str, folder: Path, tracker: L.Tracker, run_id: str, root: str
) -> dict:
    """One point's pretraining; its record whatever happened (a failure is a record too)."""
    from ..checkpoint import checkpoint_sha256
    from ..data.paths import data_paths
    from ..model.accounting import account
    from ..train import run_stage
    from ..train.loop import NonFiniteLoss

    record: dict[str, Any] = {
        "name": point.name,
        "key": key,
        "status": "ok",
        "reason": None,
        **{k: point.coordinates[k] for k in ("active_params", "total_params", "d_model", "n_layers")},
        "sparsity": point.sparsity,
        "granularity": point.granularity,
        "shared_fraction": point.shared_fraction,
        "target_active_params": point.target_active_params,
        "tokens": point.tokens,
        "lr": point.train["lr"],
        "batch_size": point.train["batch_size"],
        "steps": point.train["steps"],
        "val_loss": None,
        "model": point.model,
        "accounting": account(pp.model, params.scaling.context).to_dict(),
    }
    fields: dict[str, Any] = {}
    t0 = time.perf_counter()
    print(f"[scaling] {point.name}: {point.tokens:,} tokens, {point.train['steps']} steps", flush=True)
    try:
        with cpu_slot(_slots(params), slot_folder(root)):
            t_start = time.perf_counter()
            result = run_stage(
                pp,
                "pretrain",
                data_dir=data_paths(params, root=root).root,
                out_dir=folder / "work",
                callbacks=[MlflowSink(tracker, run_id)],
                progress=False,
            )
            wall = time.perf_counter() - t_start
        summary = result.summary()
        record["val_loss"] = summary.get("last_val_loss")
        tok_s = summary.get("tok_per_s") or 0.0
        record["wall_s"] = wall
        record["train_s"] = point.tokens / tok_s if tok_s else None
        output = folder / "output"
        if output.exists():
            shutil.rmtree(output)
        result.checkpoint.rename(output)
        shutil.rmtree(folder / "work", ignore_errors=True)  # resumable steps are not needed any more
        record["checkpoint_sha256"] = checkpoint_sha256(output)
        fields["checkpoint"] = str(output)
    except NonFiniteLoss as e:
        record.update(status="diverged", reason=str(e))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # the sweep goes on; the next run tries this point again
        record.update(status="failed", reason=f"{type(e).__name__}: {e}")
        print(f"[scaling] {point.name} failed: {record['reason']}", file=sys.stderr, flush=True)
    record["point_wall_s"] = time.perf_counter() - t0
    metrics = {k: record.get(k) for k in ("val_loss", "tokens", "wall_s", "train_s", "point_wall_s")}
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    tracker.log_metrics(run_id, flatten_numbers(record["accounting"], "arch."))
    summary_out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {"record": record, "summary": summary_out, **fields}


# --- the fit ------------------------------------------------------------------------------
def _fit_files_intact(ref: ScalingRef) -> bool:
    files = [ref.records_file, ref.fit_file, ref.design_file, *ref.plots]
    return all(Path(f).is_file() for f in files if f)


def scaling_fit(ctx: Context, sweep_plan: SweepPlan, records: list[dict]) -> ScalingRef:
    """Fit the law to the sweep's records, design under the budgets, plot; ends the stage's run."""
    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    order = {p["name"]: i for g in sweep_plan.groups for i, p in enumerate(g)}
    records = sorted(
        records, key=lambda r: (r.get("target_active_params", 0), order.get(r["name"], 0), r["name"])
    )
    code = L.code_version(Path(ctx.root), FIT_CODE)
    fitted_on = [(r["name"], r["key"], r["status"], r["val_loss"]) for r in records]
    sweep = params.scaling.sweep
    key = digest(
        {
            "records": fitted_on,
            "sweep": to_dict(sweep),
            "budgets": {k: v for k, v in to_dict(params.scaling).items() if k != "sweep"},
            "base_model": to_dict(params.model),
            "code": code,
        }
    )
    folder = stage_folder(ctx.root, params, STAGE, key)
    run_id = sweep_plan.run_id
    tracker.set_tags(run_id, {L.CACHE_KEY: key})
    try:
        cached = load_cached(folder, key, ScalingRef, _fit_files_intact)
        if cached is not None:
            ref = dataclasses.replace(cached, run_id=run_id, reused=True)
            tracker.set_tags(run_id, {L.REUSED_FROM_RUN: cached.produced_by_run_id})
        else:
            ref = ScalingRef(
                stage=STAGE,
                key=key,
                run_id=run_id,
                produced_by_run_id=run_id,
                **_fit(params, records, folder),
            )
            save_cached(folder, ref)
        _log_fit(tracker, run_id, ref)
        tracker.end_run(run_id)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    if params.model.source == "scaling" and ref.design_file is None:
        raise UserError(
            f"model.source: scaling needs a design from the fitted law, but {ref.reason}; "
            "fix scaling.sweep (or the budgets), or set model.source: params"
        )
    return ref


def _fit(params: Params, records: list[dict], folder: Path) -> dict:
    from ..scaling import design as design_mod
    from ..scaling import law as law_mod
    from ..scaling import plots
    from ..scaling.check import paper_check

    sweep = params.scaling.sweep
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"records_file": str(write_json_atomic(folder / "records.json", records))}
    ok = [r for r in records if r.get("status") == "ok"]
    law = None
    chosen = None
    if sweep is None:
        out.update(status="skipped", reason="no sweep is configured (scaling.sweep: null)")
    elif len(ok) < sweep.min_points_to_fit:
        out.update(
            status="skipped",
            reason=(
                f"the fit needs at least {sweep.min_points_to_fit} ok points "
                f"(scaling.sweep.min_points_to_fit) and the sweep has {len(ok)} (of {len(records)})"
            ),
        )
    else:
        try:
            law = law_mod.fit(records, seed=params.runtime.seed)
        except UserError as e:  # e.g. fewer points than this sweep's free parameters need
            out.update(status="skipped", reason=f"the fit refused: {e}")
    if law is not None:
        out.update(status="fitted", fit_file=str(write_json_atomic(folder / "fit.json", law)))
        budgets = params.scaling
        try:
            chosen = design_mod.design(
                law,
                params.model,
                memory_gib=budgets.memory_budget_gib,
                gflops_per_token=budgets.compute_budget_gflops_per_token,
                context=budgets.context,
            )
            chosen["paper_check"] = paper_check(
                law,
                params.model,
                memory_gib=budgets.memory_budget_gib,
                gflops_per_token=budgets.compute_budget_gflops_per_token,
                context=budgets.context,
            )
            inside = _fitted_budgets(ok)
            if inside is not None:
                try:
                    chosen["paper_check_in_range"] = paper_check(
                        law, params.model, context=budgets.context, **inside
                    )
                except UserError as e:  # the sweep's own range fits no design of the grid
                    chosen["paper_check_in_range_skipped"] = str(e)
        except UserError as e:
            out["reason"] = f"no design: {e}"
        else:
            out["design_file"] = str(write_json_atomic(folder / "design.json", chosen))
    if records:
        out["plots"] = [str(p) for p in plots.render(records, law, chosen, folder / "plots")]
    return out


def _fitted_budgets(ok: list[dict]) -> Optional[dict]:
    """Budgets inside the sweep's own range (the largest point's INT4 memory, the median
    point's FLOPs per token): the paper check where the law needs no extrapolation. None
    when the records carry no accounting."""
    acc = [r["accounting"] for r in ok if "int4_weight_bytes" in (r.get("accounting") or {})]
    if not acc:
        return None
    gib = max(a["int4_weight_bytes"] for a in acc) / 2**30
    flops = sorted(a["flops_per_token"] for a in acc)[len(acc) // 2] / 1e9
    return {"memory_gib": gib, "gflops_per_token": flops}


def _log_fit(tracker: L.Tracker, run_id: str, ref: ScalingRef) -> None:
    tracker.set_tags(run_id, {STATUS_TAG: ref.status, "mobilemoe.scaling.reason": ref.reason})
    law = ref.fit()
    if law is not None:
        keys = ("r2", "loo_median_rel_err", "loo_const_median_rel_err", "n_points", "loss_spread")
        tracker.log_metrics(run_id, {k: law[k] for k in keys if isinstance(law.get(k), (int, float))})
        tracker.log_metrics(run_id, flatten_numbers(law.get("params", {}), "law."))
        tracker.log_metrics(run_id, flatten_numbers(law.get("extrapolation", {}), "extrapolation."))
    chosen = ref.design()
    if chosen is not None:
        best = chosen["best"]
        tracker.log_metrics(run_id, {"design.predicted_loss": best["predicted_loss"]})
        tracker.log_metrics(run_id, flatten_numbers(best.get("coordinates", {}), "design."))
        for name in ("paper_check", "paper_check_in_range"):
            check = chosen.get(name)
            if check:
                tracker.set_tags(run_id, {f"mobilemoe.scaling.{name}": check["summary"]})
                tracker.log_metrics(run_id, {f"{name}.agrees": float(check["agrees"])})
    for f in [ref.records_file, ref.fit_file, ref.design_file]:
        if f:
            tracker.log_artifacts(run_id, f, "scaling")
    for f in ref.plots:
        tracker.log_artifacts(run_id, f, "scaling/plots")


def with_design(ctx: Context, ref: ScalingRef) -> Context:
    """``model.source: scaling``: the stages after the sweep train the designed model (the
    params in effect carry it; their runs record the scaling run that chose it)."""
    if ctx.parsed.model.source != "scaling":
        return ctx
    chosen = ref.design()
    if chosen is None:
        raise UserError(f"model.source: scaling: the scaling stage made no design ({ref.reason})")
    model = {**chosen["best"]["model"], "source": "scaling"}
    params = {**ctx.params, "model": model}
    return dataclasses.replace(ctx, params=params, model_source_run_id=ref.run_id)


# --- reading a sweep back ---------------------------------------------------------------------
def latest_records(params: Params, root: Optional[str | Path] = None) -> list[dict]:
    """The point records of the latest scaling run with points, from its MLflow child runs
    (``mobilemoe scaling fit`` and ``mobilemoe design`` read the law's data from here)."""
    tracker = L.Tracker(params, Path(root) if root else None)
    for run in tracker.find_runs({L.STAGE: STAGE}, max_results=20):
        children = tracker.client.search_runs(
            [tracker.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
            max_results=5000,
        )
        records = [json.loads(c.data.tags[RECORD_TAG]) for c in children if RECORD_TAG in c.data.tags]
        if records:
            return sorted(records, key=lambda r: (r.get("target_active_params", 0), r["name"]))
    raise UserError(
        f"no scaling sweep with points in MLflow ({tracker.uri.split('?')[0]}, experiment "
        f"{params.tracking.experiment!r}); run the flow with scaling.sweep set, or pass --records FILE"
    )

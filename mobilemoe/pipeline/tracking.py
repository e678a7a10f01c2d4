"""The pipeline's MLflow bookkeeping: stage tags, reused-stage runs, the ``.pte``'s
LoggedModel, and the trainer callback that streams metrics to a stage's run.

The tag names and what they link are the contract of :mod:`mobilemoe.lineage`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .. import lineage as L
from ..environment import environment, environment_tags
from .refs import Context, StageRef


def stage_tags(ctx: Context, stage: str, key: str, upstream: Optional[StageRef], code_version: str) -> dict:
    """The tags of a stage's run: what it is, its key, its input, code and data versions,
    and the environment running it (a reused run adds the one that made the output)."""
    return {
        L.STAGE: stage,
        L.CACHE_KEY: key,
        L.METAFLOW_PATHSPEC: ctx.pathspec,
        L.CODE_VERSION: code_version,
        L.INPUT_CHECKPOINT_SHA256: upstream.get("checkpoint_sha256") if upstream else None,
        L.INPUT_RUN_ID: upstream.run_id if upstream else None,
        **ctx.git,
        **L.data_version_tags(ctx.data_version or {}),
        L.MODEL_SOURCE_RUN: ctx.model_source_run_id,
        **environment_tags(environment(ctx.parsed.runtime.device)),
    }


def record_reuse(
    ctx: Context,
    tracker: L.Tracker,
    cached: StageRef,
    tags: dict,
    params_flat: dict,
    run_name: Optional[str] = None,
) -> str:
    """A child run in this pipeline run that points at the run which made the output;
    returns its id."""
    extra = {L.REUSED_FROM_RUN: cached.produced_by_run_id}
    for name, tag in (
        ("checkpoint_sha256", L.CHECKPOINT_SHA256),
        ("pte_sha256", L.PTE_SHA256),
        ("model_id", L.MODEL_ID),
    ):
        if cached.get(name):
            extra[tag] = cached[name]
    # which environment made the output (older cache entries did not record one)
    extra.update(environment_tags(cached.environment, reused=True) or {L.REUSED_ENV_SHA256: "unknown"})
    run_id = tracker.start_run(
        f"{run_name or cached.stage} (reused)", {**tags, **extra}, parent_run_id=ctx.pipeline_run_id
    )
    tracker.log_params(run_id, params_flat)
    tracker.log_metrics(run_id, numbers(cached.summary))
    tracker.end_run(run_id)
    return run_id


def numbers(d: dict) -> dict[str, float]:
    """The numeric entries of a flat dict, as floats (what MLflow metrics take)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a nested dict under a dotted name (``a.b.c``), e.g. data stats."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1].replace(" ", "_")] = float(obj)
    return out


def ensure_logged_model(
    tracker: L.Tracker,
    report_path: str | Path,
    pte_sha256: str,
    source_run_id: str,
    input_run_id: Optional[str],
    model_id: Optional[str] = None,
) -> str:
    """The ``.pte``'s LoggedModel (made once per program and tracking store): ``model_id``
    if it still exists here for this program, else a new one from the export report."""
    client = tracker.client
    if model_id:
        try:
            if client.get_logged_model(model_id).tags.get(L.PTE_SHA256) == pte_sha256:
                return model_id
        except Exception:  # another tracking store, or deleted: make it again
            pass
    report = json.loads(Path(report_path).read_text())
    q = report.get("quantization", {})
    model_params = {
        "quantization.scheme": str(q.get("scheme")),
        "quantization.group_size": str(q.get("group_size")),
        "quantization.quantize_embedding": str(q.get("quantize_embedding")),
        "quantization.weight_scale_dtype": str(q.get("weight_scale_dtype")),
        "program_bytes": str(report["program_bytes"]),
        "max_seq_len": str(report["context"]["max_seq_len"]),
        "source_checkpoint_sha256": str(report["source"]["checkpoint_sha256"]),
    }
    for k, v in report["size"].items():
        model_params[f"size.{k}"] = str(v)
    model = client.create_logged_model(
        tracker.experiment_id,
        name=f"{report['source'].get('model') or 'model'}-pte",
        source_run_id=source_run_id,
        tags={
            L.PTE_SHA256: pte_sha256,
            L.STAGE: "export",
            L.INPUT_CHECKPOINT_SHA256: report["source"]["checkpoint_sha256"],
            L.INPUT_RUN_ID: input_run_id or "",
        },  # the QAT run
        params=model_params,
        model_type="executorch-pte",
    )
    try:
        client.log_model_artifacts(model.model_id, str(Path(report_path).parent))
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model.model_id


def log_model_metrics(tracker: L.Tracker, run_id: str, model_id: str, metrics: dict) -> None:
    """Metrics on the run and on the LoggedModel (the run keeps them if the model is elsewhere)."""
    try:
        tracker.log_metrics(run_id, metrics, model_id=model_id)
    except Exception as e:  # the model lives in another store: the run still has them
        print(f"warning: could not attach metrics to LoggedModel {model_id}: {e}")


class MlflowSink:
    """Trainer callback: metrics to the stage's MLflow run as they come (batched).

    Flushes every 50 rows, on an error and on close, so the curves of a run that
    diverged or crashed reach MLflow: the rows a user needs to debug it.
    """

    def __init__(self, tracker: L.Tracker, run_id: str, batch: int = 50):
        self.tracker, self.run_id, self.batch = tracker, run_id, batch
        self.rows: list[dict] = []

    def on_log(self, step: int, metrics: dict) -> None:
        self.rows.append({"step": step, **metrics})
        if len(self.rows) >= self.batch:
            self.flush()

    def on_eval(self, step: int, metrics: dict) -> None:
        self.on_log(step, metrics)

    def on_error(self, exc: BaseException) -> None:
        self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.tracker.log_history(self.run_id, rows)

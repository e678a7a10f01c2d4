"""The pipeline's stages as plain functions: cache lookup, MLflow lineage, the work.

Flow steps (``flows/full_repro.py``) are thin: each calls one function here with a small
context dict and passes along small references (paths, hashes, run ids).

Rerunning one stage with new params: every stage output is cached in the artifact store
under a key of (the stage's params, its inputs' hashes, the code version). A new ``run``
after editing ``params.yaml`` finds unchanged upstream stages by key and reuses them (their
MLflow child run in the new pipeline run is tagged ``mobilemoe.reused_from_run_id``), and
redoes only the stages whose key changed. A crashed stage reruns in the same keyed
folder, so the trainer resumes from its latest checkpoint.

    artifacts/stages/<stage>/<key16>/
        work/        the trainer's output folder (checkpoints/step_*, resumable)
        output/      the stage's final output (a checkpoint folder with manifest)
        stage.json   written last: key, inputs, metrics summary, MLflow run id
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import lineage as L
from .config import Params, flat_params, parse_params, read_yaml, to_dict
from .errors import UserError

TRAIN_STAGES = ("pretrain", "midtrain", "sft", "qat")
PREVIOUS = {"pretrain": None, "midtrain": "pretrain", "sft": "midtrain", "qat": "sft"}
# Settings that change speed, not results (CPU float results are reproducible at a fixed
# thread count; DDP with the same global batch matches to ~1e-5), kept out of cache keys.
PERFORMANCE_KEYS = ("nproc", "log_every")


@dataclass
class Context:
    """What every step needs; small enough to be a Metaflow artifact."""

    root: str
    params: dict  # the raw params.yaml content in effect
    pipeline_run_id: str
    pathspec: str
    code_version: str
    git: dict
    data_version: Optional[dict] = None

    @property
    def parsed(self) -> Params:
        return parse_params(self.params, "params.yaml")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def artifact_store(ctx_root: str | Path, params: Params) -> Path:
    store = params.tracking.artifact_store
    if "://" in store:
        raise UserError(f"tracking.artifact_store={store!r}: only local folders are supported for "
                        "the stage cache so far; use a path (relative to the project) or sync "
                        "the folder to object storage yourself")
    path = Path(store)
    return path if path.is_absolute() else Path(ctx_root) / path


# --- start / end ------------------------------------------------------------------------
def start(config_value: dict, pathspec: str, root: Optional[str] = None) -> Context:
    """Validate the run's Config against the project's params.yaml; open the parent run."""
    from .config import project_root

    root_path = Path(root) if root else project_root()
    params_file = root_path / "params.yaml"
    config_value = json.loads(json.dumps(dict(config_value)))  # plain dict (ConfigValue-safe)
    on_disk = read_yaml(params_file)
    if config_value != on_disk:
        diff = _diff(on_disk, config_value)
        raise UserError(
            f"this run's Config differs from {params_file}, the file DVC versions and lineage "
            f"records ({'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}). Make the "
            "configuration the project's params.yaml (`mobilemoe use-preset NAME`, or copy "
            "your file over it) and run again without --config.")
    params = parse_params(config_value, str(params_file))
    tracker = L.Tracker(params, root_path)
    git = L.git_info(root_path)
    code = L.code_version(root_path)
    run_id = tracker.start_run(f"pipeline {pathspec}", {
        L.STAGE: "pipeline", L.METAFLOW_PATHSPEC: pathspec, L.CODE_VERSION: code,
        L.PARAMS_SHA256: _sha(config_value), **git})
    tracker.log_params(run_id, flat_params(params))
    tracker.log_dict(run_id, config_value, "params.yaml.json")
    return Context(str(root_path), config_value, run_id, pathspec, code, git)


def finish(ctx: Context, status: str = "FINISHED") -> None:
    L.Tracker(ctx.parsed, Path(ctx.root)).end_run(ctx.pipeline_run_id, status)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: params.yaml {a!r}, run {b!r}"]


# --- curate -----------------------------------------------------------------------------
def curate(ctx: Context) -> dict:
    """Run the DVC data stages; record the data version in a child run."""
    from . import data as data_mod

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    run_id = tracker.start_run("curate", {L.STAGE: "curate", L.METAFLOW_PATHSPEC: ctx.pathspec,
                                          L.CODE_VERSION: ctx.code_version, **ctx.git},
                               parent_run_id=ctx.pipeline_run_id)
    try:
        t0 = time.time()
        result = data_mod.curate(root=ctx.root)
        version = data_mod.data_version(ctx.root)
        tracker.set_tags(run_id, L.data_version_tags(version))
        tracker.log_params(run_id, flat_params(params, "data"))
        stats = result.get("stats") or {}
        flat = {k: v for k, v in _flatten_numbers(stats).items()}
        tracker.log_metrics(run_id, {**flat, "curate_wall_s": time.time() - t0})
        if result.get("stats_path") and Path(result["stats_path"]).exists():
            tracker.log_artifacts(run_id, result["stats_path"])
        tracker.end_run(run_id)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    return {"run_id": run_id, "data_version": version, "stats": stats,
            "wall_s": time.time() - t0}


def _flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1].replace(" ", "_")] = float(obj)
    return out


# --- training stages ----------------------------------------------------------------------
def stage_key(stage: str, params: Params, upstream_sha: Optional[str], data_version: dict,
              code_version: str) -> str:
    section = {k: v for k, v in to_dict(getattr(params, stage)).items() if k not in PERFORMANCE_KEYS}
    return _sha({
        "stage": stage, "section": section, "model": to_dict(params.model),
        "seed": params.runtime.seed, "precision": params.runtime.precision,
        "qat": to_dict(params.qat) if stage == "qat" else None,
        "upstream": upstream_sha, "data": data_version, "code": code_version,
    })


def _stage_tags(ctx: Context, stage: str, key: str, upstream: Optional[dict]) -> dict:
    return {L.STAGE: stage, L.CACHE_KEY: key, L.METAFLOW_PATHSPEC: ctx.pathspec,
            L.CODE_VERSION: ctx.code_version,
            L.INPUT_CHECKPOINT_SHA256: upstream.get("checkpoint_sha256") if upstream else None,
            L.INPUT_RUN_ID: upstream["run_id"] if upstream else None,
            **ctx.git, **L.data_version_tags(ctx.data_version or {})}


def _reuse(ctx: Context, tracker: L.Tracker, stage: str, cached: dict, tags: dict,
           params_flat: dict) -> dict:
    """A child run in this pipeline run that points at the run which made the output."""
    produced_by = cached.get("produced_by_run_id") or cached["run_id"]
    extra = {L.REUSED_FROM_RUN: produced_by}
    for name, tag in (("checkpoint_sha256", L.CHECKPOINT_SHA256), ("pte_sha256", L.PTE_SHA256),
                      ("model_id", L.MODEL_ID)):
        if cached.get(name):
            extra[tag] = cached[name]
    run_id = tracker.start_run(f"{stage} (reused)", {**tags, **extra}, parent_run_id=ctx.pipeline_run_id)
    tracker.log_params(run_id, params_flat)
    tracker.log_metrics(run_id, _numbers(cached.get("summary", {})))
    tracker.end_run(run_id)
    return {**cached, "stage": stage, "run_id": run_id, "produced_by_run_id": produced_by,
            "reused": True}


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _stage_folder(ctx: Context, stage: str, key: str) -> Path:
    return artifact_store(ctx.root, ctx.parsed) / "stages" / stage / key[:16]


def _run_cached(ctx: Context, tracker: L.Tracker, stage: str, key: str, folder: Path, tags: dict,
                params_flat: dict, produce: Callable[[str], dict], check=None,
                keep: Callable[[dict], bool] = lambda ref: True) -> dict:
    """The one cache-or-run mechanism of every stage after ``curate``.

    A cached output under ``folder`` with this ``key`` (and passing ``check``) is reused
    through a child run that points at the run which made it. Otherwise a child run is
    opened, ``produce(run_id)`` does the work and returns the stage's fields, and the
    reference is written to ``stage.json`` (last, so a half-done stage is never found)
    when ``keep(ref)``; a reference that is not kept ends its run FAILED and is redone
    by the next run.
    """
    cached = _load_cached(folder, key, check)
    if cached is not None:
        return _reuse(ctx, tracker, stage, cached, tags, params_flat)
    run_id = tracker.start_run(stage, tags, parent_run_id=ctx.pipeline_run_id)
    try:
        tracker.log_params(run_id, params_flat)
        ref = {"stage": stage, "key": key, "run_id": run_id, "produced_by_run_id": run_id,
               **produce(run_id), "reused": False}
        kept = keep(ref)
        if kept:
            _write_json_atomic(folder / "stage.json", ref)
        tracker.end_run(run_id, "FINISHED" if kept else "FAILED")
        return ref
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise


def _train(ctx: Context, tracker: L.Tracker, run_id: str, params: Params, stage: str,
           folder: Path, upstream: Optional[dict]) -> dict:
    """Train one stage into ``folder/work`` (resuming there), copy the final checkpoint to
    ``folder/output``, log it; the stage's fields for :func:`_run_cached`."""
    from .checkpoint import checkpoint_sha256, verify
    from .data.paths import data_paths
    from .train import run_stage

    sink = _MlflowSink(tracker, run_id)
    with cpu_slot(ctx):
        result = run_stage(params, stage, data_dir=data_paths(params, root=ctx.root).root,
                           out_dir=folder / "work",
                           init_checkpoint=upstream["checkpoint"] if upstream else None,
                           callbacks=[sink])
    sink.flush()
    output = folder / "output"
    _replace_dir(result.checkpoint, output)
    verify(output)
    sha = checkpoint_sha256(output)
    summary = result.summary()
    tracker.log_metrics(run_id, _numbers(summary))
    tracker.set_tags(run_id, {L.CHECKPOINT_SHA256: sha})
    tracker.log_artifacts(run_id, output, "checkpoint")
    return {"checkpoint": str(output), "checkpoint_sha256": sha, "summary": summary,
            "history": result.history_for_plots()}


def train_stage(ctx: Context, stage: str, upstream: Optional[dict]) -> dict:
    """Run (or reuse) one training stage; returns a small reference for the next step."""
    if stage not in TRAIN_STAGES:
        raise UserError(f"unknown training stage {stage!r} (one of {', '.join(TRAIN_STAGES)})")
    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    upstream_sha = upstream["checkpoint_sha256"] if upstream else None
    key = stage_key(stage, params, upstream_sha, ctx.data_version or {}, ctx.code_version)
    folder = _stage_folder(ctx, stage, key)
    return _run_cached(ctx, tracker, stage, key, folder, _stage_tags(ctx, stage, key, upstream),
                       flat_params(params, stage),
                       lambda run_id: _train(ctx, tracker, run_id, params, stage, folder, upstream))


def _replace_dir(src: str | Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary folder (a reader never sees half)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


# --- export -----------------------------------------------------------------------------------
def _key(stage: str, section: Any, upstream: dict, ctx: Context, **extra) -> str:
    return _sha({"stage": stage, "section": section, "upstream": upstream, "code": ctx.code_version,
                 **extra})


def export_stage(ctx: Context, qat: dict) -> dict:
    """Export the QAT checkpoint to an INT4 ``.pte``; an MLflow LoggedModel records it."""
    from .checkpoint import sha256_file
    from .export import PTE, REPORT, TOKENIZER, export_pte

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    key = _key("export", to_dict(params.export), {"checkpoint": qat["checkpoint_sha256"]}, ctx)
    folder = _stage_folder(ctx, "export", key)
    output = folder / "output"
    flat = {**flat_params(params, "export"), "qat.scheme": params.qat.scheme,
            "qat.group_size": params.qat.group_size}

    def produce(run_id: str) -> dict:
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        with cpu_slot(ctx):
            report = export_pte(qat["checkpoint"], work, quantize=params.export.quantize,
                                max_seq_len=params.export.max_seq_len, parity=True,
                                threads=params.runtime.threads)
        _replace_dir(work, output)
        shutil.rmtree(work, ignore_errors=True)
        summary = export_summary(report)
        tracker.log_metrics(run_id, _numbers(summary))
        tracker.set_tags(run_id, {L.PTE_SHA256: report["program_sha256"]})
        tracker.log_artifacts(run_id, output / REPORT)
        fields = {"pte": str(output / PTE), "tokenizer": str(output / TOKENIZER),
                  "report_path": str(output / REPORT), "pte_sha256": report["program_sha256"],
                  "checkpoint_sha256": qat["checkpoint_sha256"], "input_run_id": qat["run_id"],
                  "summary": summary}
        fields["model_id"] = _ensure_logged_model(tracker, {**fields, "run_id": run_id}, output)
        tracker.set_tags(run_id, {L.MODEL_ID: fields["model_id"]})
        return fields

    ref = _run_cached(ctx, tracker, "export", key, folder, _stage_tags(ctx, "export", key, qat), flat,
                      produce, check=lambda ref: sha256_file(ref["pte"]) == ref["pte_sha256"])
    if ref["reused"]:  # the program's LoggedModel may live in another tracking store
        ref["model_id"] = _ensure_logged_model(tracker, ref, output)
    return ref


def export_summary(report: dict) -> dict:
    """The export report's headline numbers (flat, for MLflow and the card)."""
    ops = report.get("operators", {})
    parity = report.get("parity", {})
    out = {"program_bytes": report["program_bytes"],
           "program_mib": report["program_bytes"] / 2 ** 20,
           "fp32_weight_bytes": report["size"].get("fp32_weight_bytes"),
           "int4_weight_bytes_accounted": report["size"].get("int4_weight_bytes_accounted"),
           "export_s": report.get("export_s")}
    for k in ("delegated_linears", "portable_linears", "delegate_calls", "portable_ops",
              "delegated_ops"):
        if isinstance(ops.get(k), (int, float)):
            out[f"ops_{k}"] = ops[k]
    for k, v in parity.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"parity_{k}"] = v
        elif isinstance(v, bool):
            out[f"parity_{k}"] = float(v)
    return {k: v for k, v in out.items() if v is not None}


def _ensure_logged_model(tracker: L.Tracker, ref: dict, folder: Path) -> str:
    """The ``.pte``'s LoggedModel (made once per program and tracking store)."""
    client = tracker.client
    if ref.get("model_id"):
        try:
            if client.get_logged_model(ref["model_id"]).tags.get(L.PTE_SHA256) == ref["pte_sha256"]:
                return ref["model_id"]
        except Exception:  # another tracking store, or deleted: make it again
            pass
    report = json.loads(Path(ref["report_path"]).read_text())
    q = report.get("quantization", {})
    model_params = {"quantization.scheme": str(q.get("scheme")),
                    "quantization.group_size": str(q.get("group_size")),
                    "quantization.quantize_embedding": str(q.get("quantize_embedding")),
                    "quantization.weight_scale_dtype": str(q.get("weight_scale_dtype")),
                    "program_bytes": str(report["program_bytes"]),
                    "max_seq_len": str(report["context"]["max_seq_len"]),
                    "source_checkpoint_sha256": str(report["source"]["checkpoint_sha256"])}
    for k, v in report["size"].items():
        model_params[f"size.{k}"] = str(v)
    model = client.create_logged_model(
        tracker.experiment_id, name=f"{report['source'].get('model') or 'model'}-pte",
        source_run_id=ref.get("produced_by_run_id") or ref["run_id"],
        tags={L.PTE_SHA256: ref["pte_sha256"], L.STAGE: "export",
              L.INPUT_CHECKPOINT_SHA256: report["source"]["checkpoint_sha256"],
              L.INPUT_RUN_ID: ref.get("input_run_id", "")},  # the QAT run
        params=model_params, model_type="executorch-pte")
    try:
        client.log_model_artifacts(model.model_id, str(folder))
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model.model_id


# --- eval ---------------------------------------------------------------------------------------
def eval_stage(ctx: Context, qat: dict, export: Optional[dict]) -> dict:
    """lm-eval on the QAT checkpoint and on the exported program, side by side."""
    from .eval import flat_metrics, run_eval, write_results

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    inputs = {"checkpoint": qat["checkpoint_sha256"],
              "pte": export["pte_sha256"] if export else None}
    key = _key("eval", to_dict(params.eval), inputs, ctx, data=ctx.data_version)
    folder = _stage_folder(ctx, "eval", key)
    tags = _stage_tags(ctx, "eval", key, qat)
    if export:
        tags[L.PTE_SHA256] = export["pte_sha256"]
        tags[L.MODEL_ID] = export.get("model_id")

    def produce(run_id: str) -> dict:
        results, files, summary = {}, {}, {}
        with cpu_slot(ctx):
            results["checkpoint"] = run_eval(params, checkpoint=qat["checkpoint"])
            if export:
                results["pte"] = run_eval(params, pte=export["pte"], tokenizer=export["tokenizer"])
        for label, res in results.items():
            files[label] = str(write_results(res, folder / f"results_{label}.json"))
            metrics = flat_metrics(res, prefix=f"eval_{label}")
            tracker.log_metrics(run_id, metrics)
            if label == "pte" and export and export.get("model_id"):
                _log_model_metrics(tracker, run_id, export["model_id"], flat_metrics(res))
            summary.update(metrics)  # all of them: a reused run logs the same names
            summary.update({f"eval_{label}/{task}/primary": r["score"]
                            for task, r in res["tasks"].items() if r.get("score") is not None})
            tracker.log_artifacts(run_id, files[label], "eval")
        return {"results_files": files, "summary": summary}

    ref = _run_cached(ctx, tracker, "eval", key, folder, tags, flat_params(params, "eval"), produce,
                      check=lambda ref: all(Path(p).is_file() for p in ref["results_files"].values()))
    # the full results (for the card) stay in their files, not in stage.json or the artifact
    ref["results"] = {k: json.loads(Path(p).read_text()) for k, p in ref["results_files"].items()}
    return ref


def _log_model_metrics(tracker: L.Tracker, run_id: str, model_id: str, metrics: dict) -> None:
    try:
        tracker.log_metrics(run_id, metrics, model_id=model_id)
    except Exception as e:  # the model lives in another store: the run still has them
        print(f"warning: could not attach metrics to LoggedModel {model_id}: {e}")


# --- device profile -------------------------------------------------------------------------------
def device_profile_stage(ctx: Context, export: dict) -> dict:
    """Send the ``.pte`` to the device lab, wait, record the result on the LoggedModel."""
    from .device_profile import bytes_metrics, profile_metrics, run_device_profile

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    section = {k: v for k, v in to_dict(params.device_lab).items() if k not in ("poll_s", "timeout_s")}
    key = _key("device_profile", section, {"pte": export["pte_sha256"]}, ctx)
    folder = _stage_folder(ctx, "device_profile", key)
    tags = {**_stage_tags(ctx, "device_profile", key, export), L.PTE_SHA256: export["pte_sha256"],
            L.MODEL_ID: export.get("model_id"), L.INPUT_CHECKPOINT_SHA256: None}
    tags = {k: v for k, v in tags.items() if v is not None}

    def produce(run_id: str) -> dict:
        with cpu_slot(ctx, local=params.device_lab.queue is None):
            result = run_device_profile(params, export["pte"], export["tokenizer"], folder / "work",
                                        labels={"pipeline_run_id": ctx.pipeline_run_id,
                                                "pte_sha256": export["pte_sha256"]})
        metrics = {**profile_metrics(result), **bytes_metrics(params, result)}
        tracker.log_metrics(run_id, metrics)
        if export.get("model_id"):
            _log_model_metrics(tracker, run_id, export["model_id"], metrics)
        tracker.log_dict(run_id, result, "device_profile_result.json")
        tracker.set_tags(run_id, {L.DEVICE_STATUS: result.get("status")})
        return {"result": result, "summary": metrics, "pte_sha256": export["pte_sha256"],
                "model_id": export.get("model_id")}

    def ok(ref: dict) -> bool:  # errors are not cached: the next run tries again
        return ref.get("result", {}).get("status") == "ok"

    return _run_cached(ctx, tracker, "device_profile", key, folder, tags,
                       flat_params(params, "device_lab"), produce, check=ok, keep=ok)


# --- the science check --------------------------------------------------------------------------
def dense_baseline_stage(ctx: Context, pretrain: dict) -> dict:
    """Pre-train the dense model with the MoE's active parameters on the same batches."""
    import dataclasses

    from .model.accounting import account
    from .train.dense import dense_counterpart

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    dense_model = dense_counterpart(params.model)
    dense_params = dataclasses.replace(params, model=dense_model)
    key = stage_key("pretrain", dense_params, None, ctx.data_version or {}, ctx.code_version)
    folder = _stage_folder(ctx, "dense_baseline", key)
    flat = {**flat_params(dense_params, "model"), **flat_params(params, "pretrain")}
    ref = _run_cached(ctx, tracker, "dense_baseline", key, folder,
                      _stage_tags(ctx, "dense_baseline", key, None), flat,
                      lambda run_id: _train(ctx, tracker, run_id, dense_params, "pretrain", folder, None))
    seq = params.pretrain.seq_len
    moe_acc, dense_acc = account(params.model, seq), account(dense_model, seq)
    moe_val, dense_val = pretrain["summary"].get("last_val_loss"), ref["summary"].get("last_val_loss")
    ref["comparison"] = {
        "tokens": pretrain["summary"].get("tokens"),
        "moe": {"model": params.model.name, "val_loss": moe_val, "active_params": moe_acc.active_params,
                "total_params": moe_acc.total_params, "flops_per_token": moe_acc.flops_per_token,
                "tok_per_s": pretrain["summary"].get("tok_per_s")},
        "dense": {"model": dense_model.name, "val_loss": dense_val,
                  "active_params": dense_acc.active_params, "total_params": dense_acc.total_params,
                  "flops_per_token": dense_acc.flops_per_token,
                  "tok_per_s": ref["summary"].get("tok_per_s")},
        "val_loss_delta": None if moe_val is None or dense_val is None else moe_val - dense_val,
    }
    tracker.log_dict(ref["run_id"], ref["comparison"], "dense_comparison.json")
    ref["profile"] = _dense_profile(ctx, tracker, dense_params, ref)
    return ref


def _dense_profile(ctx: Context, tracker: L.Tracker, dense_params: Params, dense: dict) -> dict:
    """Export the dense-active model as the MoE is exported (same format: post-training
    quantized when the MoE is INT4) and profile it with the same device-lab benchmark, so
    each run checks that the MoE's decode cost follows its active parameters."""
    from .device_profile import bytes_metrics, profile_metrics, run_device_profile
    from .export import PTE, TOKENIZER, export_pte

    params = ctx.parsed
    lab = {k: v for k, v in to_dict(params.device_lab).items() if k not in ("poll_s", "timeout_s")}
    section = {"export": to_dict(params.export), "qat": to_dict(params.qat), "device_lab": lab}
    key = _key("dense_profile", section, {"checkpoint": dense["checkpoint_sha256"]}, ctx)
    folder = _stage_folder(ctx, "dense_profile", key)

    def produce(run_id: str) -> dict:
        out = folder / "export"
        shutil.rmtree(out, ignore_errors=True)
        with cpu_slot(ctx):
            report = export_pte(dense["checkpoint"], out, quantize=params.export.quantize,
                                max_seq_len=params.export.max_seq_len, parity=False,
                                ptq=params.qat)
        with cpu_slot(ctx, local=params.device_lab.queue is None):
            result = run_device_profile(params, out / PTE, out / TOKENIZER, folder / "work",
                                        labels={"pipeline_run_id": ctx.pipeline_run_id,
                                                "pte_sha256": report["program_sha256"],
                                                "model": "dense_baseline"},
                                        op_profile=False)
        metrics = {**profile_metrics(result), **bytes_metrics(dense_params, result)}
        tracker.log_metrics(run_id, metrics)
        tracker.log_dict(run_id, result, "device_profile_result.json")
        tracker.set_tags(run_id, {L.PTE_SHA256: report["program_sha256"],
                                  L.DEVICE_STATUS: result.get("status")})
        return {"result": result, "summary": metrics, "pte_sha256": report["program_sha256"],
                "checkpoint_sha256": dense["checkpoint_sha256"]}

    def ok(ref: dict) -> bool:
        return ref.get("result", {}).get("status") == "ok"

    return _run_cached(ctx, tracker, "dense_profile", key, folder,
                       _stage_tags(ctx, "dense_profile", key, dense),
                       flat_params(params, "device_lab"), produce, check=ok, keep=ok)


# --- running heavy steps one (or N) at a time -----------------------------------------------------
class cpu_slot:
    """Hold one of ``runtime.parallel_workers`` slots while doing heavy local work.

    Metaflow runs parallel branches (eval | device_profile | dense_baseline) at once; on a
    small machine they would fight over the cores (and a profile measured beside a busy
    evaluation is wrong). A file lock per slot in the artifact store serialises them;
    ``local=False`` (the work happens elsewhere, e.g. a remote device lab) takes no slot.
    """

    def __init__(self, ctx: Context, local: bool = True):
        self.n = ctx.parsed.runtime.parallel_workers
        self.dir = artifact_store(ctx.root, ctx.parsed) / ".slots"
        self.local, self.fh = local, None

    def __enter__(self):
        import fcntl

        if not self.local:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.n):
                fh = open(self.dir / f"slot-{i}.lock", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.fh = fh
                    return self
                except BlockingIOError:
                    fh.close()
            time.sleep(0.5)

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # releases the lock
            self.fh = None
        return False


def _load_cached(folder: Path, key: str, check=None) -> Optional[dict]:
    """The stage's cached reference if it matches ``key`` and its files are intact."""
    from .checkpoint import CheckpointError, checkpoint_sha256

    path = folder / "stage.json"
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text())
    except ValueError:
        return None
    if ref.get("key") != key:
        return None
    try:
        if check is not None:
            return ref if check(ref) else None
        if checkpoint_sha256(ref["checkpoint"]) != ref["checkpoint_sha256"]:
            return None
    except (CheckpointError, KeyError, OSError, ValueError):
        return None  # damaged cache entry: redo the stage
    return ref


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


class _MlflowSink:
    """Trainer callback: metrics to the stage's MLflow run as they come (batched)."""

    def __init__(self, tracker: L.Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.rows: list[dict] = []

    def on_log(self, step: int, metrics: dict) -> None:
        self.rows.append({"step": step, **metrics})
        if len(self.rows) >= 50:
            self.flush()

    def on_eval(self, step: int, metrics: dict) -> None:
        self.on_log(step, metrics)

    def flush(self) -> None:
        if self.rows:
            self.tracker.log_history(self.run_id, self.rows)
            self.rows = []

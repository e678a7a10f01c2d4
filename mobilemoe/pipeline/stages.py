"""The pipeline's stages as plain functions: each looks up its cache, records its MLflow
run, does the work and returns a :class:`~mobilemoe.pipeline.refs.StageRef`.

Rerunning one stage with new params: a new ``run`` after editing ``params.yaml`` finds
unchanged upstream stages by key (:mod:`mobilemoe.pipeline.cache`) and reuses them (their
MLflow child run in the new pipeline run is tagged ``mobilemoe.reused_from_run_id``), and
redoes only the stages whose key changed. A crashed stage reruns in the same keyed
folder, so the trainer resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .. import lineage as L
from ..config import TRAIN_STAGES, Params, flat_params, parse_params, read_yaml, to_dict
from ..environment import environment, environment_tags
from ..errors import UserError
from ..io import replace_dir, write_json_atomic
from .cache import (
    artifact_key,
    checkpoint_intact,
    digest,
    load_cached,
    materialize,
    save_cached,
    stage_code_versions,
    stage_folder,
    stage_key,
)
from .refs import Context, CurateRef, DenseRef, EvalRef, ExportRef, ProfileRef, R, TrainRef
from .slots import cpu_slot, slot_folder
from .stores import check_stores
from .tracking import (
    MlflowSink,
    ensure_logged_model,
    flatten_numbers,
    log_model_metrics,
    numbers,
    record_reuse,
    stage_tags,
)

# device_lab settings that change how long we wait, not what is measured
_WAIT_KEYS = ("poll_s", "timeout_s")


# --- start / end ------------------------------------------------------------------------
def start(
    config_value: dict, pathspec: str, root: Optional[str] = None, datastore: Optional[str] = None
) -> Context:
    """Validate the run's Config against the project's params.yaml (and the names only
    the eval suite and device lab know); check the shared stores (``datastore``: Metaflow's
    for this run); open the parent run."""
    from ..config import project_root
    from ..preflight import preflight

    root_path = Path(root) if root else project_root()
    params_file = root_path / "params.yaml"
    config_value = json.loads(json.dumps(dict(config_value)))  # plain dict (ConfigValue-safe)
    on_disk = read_yaml(params_file)
    if config_value != on_disk:
        diff = params_diff(on_disk, config_value)
        raise UserError(
            f"this run's Config differs from {params_file}, the file DVC versions and lineage "
            f"records ({'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}). Make the "
            "configuration the project's params.yaml (`mobilemoe use-preset NAME`, or copy "
            "your file over it) and run again without --config."
        )
    params = parse_params(config_value, str(params_file))
    preflight(params, str(params_file), memory_plan=True)
    check_stores(params, L.tracking_uri(params, root_path), datastore)
    tracker = L.Tracker(params, root_path)
    git = L.git_info(root_path)
    code = L.code_version(root_path)
    run_id = tracker.start_run(
        f"pipeline {pathspec}",
        {
            L.STAGE: "pipeline",
            L.METAFLOW_PATHSPEC: pathspec,
            L.CODE_VERSION: code,
            L.PARAMS_SHA256: digest(config_value),
            **git,
            **environment_tags(environment(params.runtime.device)),
        },
    )
    tracker.log_params(run_id, flat_params(params))
    tracker.log_dict(run_id, config_value, "params.yaml.json")
    return Context(
        str(root_path),
        config_value,
        run_id,
        pathspec,
        code,
        git,
        code_versions=stage_code_versions(root_path),
    )


def finish(ctx: Context, status: str = "FINISHED") -> None:
    L.Tracker(ctx.parsed, Path(ctx.root)).end_run(ctx.pipeline_run_id, status)


def params_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """``key: params.yaml A, run B`` for every dotted key whose values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += params_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: params.yaml {a!r}, run {b!r}"]


def with_data_version(ctx: Context, curated: CurateRef) -> Context:
    """The context every stage after ``curate`` gets: it records the data version."""
    return dataclasses.replace(ctx, data_version=curated.data_version, dvc_lock=curated.dvc_lock or None)


# --- curate -----------------------------------------------------------------------------
def curate(ctx: Context) -> CurateRef:
    """Run the DVC data stages; record the data version in a child run."""
    from .. import data as data_mod

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    run_id = tracker.start_run(
        "curate",
        {
            L.STAGE: "curate",
            L.METAFLOW_PATHSPEC: ctx.pathspec,
            L.CODE_VERSION: ctx.code_for("curate"),
            **ctx.git,
            **environment_tags(environment(params.runtime.device)),
        },
        parent_run_id=ctx.pipeline_run_id,
    )
    try:
        t0 = time.time()
        if _shared_data(params):  # a teammate's version of dvc.lock: fetch it rather than rebuild it
            _pull_shared(ctx.root, params)
        result = data_mod.curate(root=ctx.root)
        version = data_mod.data_version(ctx.root)
        tracker.set_tags(run_id, L.data_version_tags(version))
        tracker.log_params(run_id, flat_params(params, "data"))
        stats = result.get("stats") or {}
        ran = {"curate_wall_s": time.time() - t0, "curate_stages_run": len(result.get("stages_run") or [])}
        tracker.log_metrics(run_id, {**flatten_numbers(stats), **ran})
        if result.get("stats_path") and Path(result["stats_path"]).exists():
            tracker.log_artifacts(run_id, result["stats_path"])
        lock = read_yaml(Path(ctx.root) / "dvc.lock")
        if _shared_data(params):  # steps elsewhere, teammates: pull this version from the remote
            from ..data.remote import configure_remote, push

            configure_remote(ctx.root, params.data.remote)
            push(ctx.root)
        tracker.end_run(run_id)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    return CurateRef(run_id=run_id, data_version=version, stats=stats, wall_s=time.time() - t0, dvc_lock=lock)


def _shared_data(params: Params) -> bool:
    """The data version goes to the DVC remote after curate: where it is on object storage
    or a step runs on another machine (a local folder remote is pushed by hand, as before)."""
    import os

    url = os.environ.get("MOBILEMOE_DVC_REMOTE_URL") or params.data.remote.url or ""
    return url.startswith("s3://") or bool(params.compute.remote_steps())


def _pull_shared(root: str, params: Params) -> None:
    from ..data.remote import RemoteError, configure_remote, pull

    if not (Path(root) / "dvc.lock").is_file():
        return
    configure_remote(root, params.data.remote)
    try:
        pull(root)
    except RemoteError:  # not pushed yet (or partly): dvc repro makes what is missing
        pass


# Where a training step needs its data: the DVC stages whose outputs it reads.
_TRAINING_DATA = ("tokenizer", "shards")


def ensure_data(ctx: Context) -> None:
    """The data version this run was given, in this step's project folder: already there
    (the machine that curated, or a shared path), else pulled through DVC from
    ``data.remote`` (a step on another machine, a node of a multi-node stage)."""
    from ..data import DataError, data_version
    from ..data.paths import data_paths
    from ..data.remote import fetch

    if not ctx.data_version:
        return
    params, root = ctx.parsed, Path(ctx.root)
    paths = data_paths(params, root=root)
    try:
        here = data_version(root)
    except DataError:
        here = None
    if here == ctx.data_version and paths.tokenizer.is_file() and (paths.root / "shards").is_dir():
        return
    if not ctx.dvc_lock:
        raise UserError(
            f"{paths.root}: the data version this run curated is not here and the run has no "
            "dvc.lock to pull it with; run the curate step first"
        )
    fetch(root, ctx.dvc_lock, params.data.remote, _TRAINING_DATA)
    if data_version(root) != ctx.data_version:
        raise UserError(f"{root / 'dvc.lock'}: the pulled data version is not the run's; rerun curate")


# --- the one cache-or-run mechanism ----------------------------------------------------------
def _slot(ctx: Context, local: bool = True) -> cpu_slot:
    return cpu_slot(ctx.parsed.runtime.parallel_workers, slot_folder(ctx.root), local=local)


def _run_cached(
    ctx: Context,
    tracker: L.Tracker,
    ref_type: type[R],
    stage: str,
    key: str,
    folder: Path,
    tags: dict,
    params_flat: dict,
    produce: Callable[[str], dict],
    check: Callable[[R], bool],
    keep: Optional[Callable[[R], bool]] = None,
    run_name: Optional[str] = None,
) -> R:
    """Reuse the stage's cached output, or make it.

    A cached output under ``folder`` with this ``key`` (read as ``ref_type``, passing
    ``check``: its files are intact) is reused
    through a child run that points at the run which made it. Otherwise a child run is
    opened, ``produce(run_id)`` does the work and returns the stage's fields, and the
    reference is written to ``stage.json`` (last, so a half-done stage is never found)
    when ``keep(ref)``; a reference that is not kept ends its run FAILED and is redone
    by the next run.
    """
    cached = load_cached(folder, key, ref_type, check)
    if cached is not None:
        run_id = record_reuse(ctx, tracker, cached, tags, params_flat, run_name)
        return dataclasses.replace(cached, run_id=run_id, reused=True)
    run_id = tracker.start_run(run_name or stage, tags, parent_run_id=ctx.pipeline_run_id)
    try:
        tracker.log_params(run_id, params_flat)
        made_by: dict[str, Any] = {
            "environment": environment(ctx.parsed.runtime.device),
            "folder": str(folder),
        }
        ref = ref_type(
            stage=stage, key=key, run_id=run_id, produced_by_run_id=run_id, **made_by, **produce(run_id)
        )
        kept = keep is None or keep(ref)
        if kept:
            save_cached(folder, ref)
        tracker.end_run(run_id, "FINISHED" if kept else "FAILED")
        return ref
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise


# --- training stages ----------------------------------------------------------------------
def train_stage(ctx: Context, stage: str, upstream: Optional[TrainRef]) -> TrainRef:
    """Run (or reuse) one training stage; returns a small reference for the next step."""
    if stage not in TRAIN_STAGES:
        raise UserError(f"unknown training stage {stage!r} (one of {', '.join(TRAIN_STAGES)})")
    params = ctx.parsed
    ensure_data(ctx)
    upstream = materialize(ctx.root, params, upstream)
    tracker = L.Tracker(params, Path(ctx.root))
    code = ctx.code_for(stage)
    upstream_sha = upstream.checkpoint_sha256 if upstream else None
    init_from = getattr(params, stage).init_from
    if init_from is not None:  # starts from a Hugging Face folder (docs/hf.md): its content is the input
        from ..hf import source_digest

        upstream, upstream_sha = None, f"hf:{source_digest(init_from, f'{stage}.init_from')}"
    key = stage_key(stage, params, upstream_sha, ctx.data_version or {}, code)
    folder = stage_folder(ctx.root, params, stage, key)
    return _run_cached(
        ctx,
        tracker,
        TrainRef,
        stage,
        key,
        folder,
        stage_tags(ctx, stage, key, upstream, code),
        flat_params(params, stage),
        lambda run_id: _train(ctx, tracker, run_id, params, stage, folder, upstream),
        check=checkpoint_intact,
    )


def _train(
    ctx: Context,
    tracker: L.Tracker,
    run_id: str,
    params: Params,
    stage: str,
    folder: Path,
    upstream: Optional[TrainRef],
) -> dict:
    """Train one stage into ``folder/work`` (resuming there), copy the final checkpoint to
    ``folder/output``, log it; the stage's fields for :func:`_run_cached`."""
    from ..checkpoint import checkpoint_sha256, verify
    from ..data.paths import data_paths
    from ..train import run_stage

    with _slot(ctx):  # the trainer flushes and closes the sink, also when training fails
        result = run_stage(
            params,
            stage,
            data_dir=data_paths(params, root=ctx.root).root,
            out_dir=folder / "work",
            init_checkpoint=upstream.checkpoint if upstream else None,
            callbacks=[MlflowSink(tracker, run_id)],
        )
    output = folder / "output"
    replace_dir(result.checkpoint, output)
    verify(output)
    sha = checkpoint_sha256(output)
    summary = result.summary()
    tracker.log_metrics(run_id, numbers(summary))
    tracker.set_tags(run_id, {L.CHECKPOINT_SHA256: sha})
    tracker.log_artifacts(run_id, output, "checkpoint")
    history = write_json_atomic(folder / "history.json", result.history_for_plots())
    return {
        "checkpoint": str(output),
        "checkpoint_sha256": sha,
        "summary": summary,
        "history_file": str(history),
    }


# --- export -----------------------------------------------------------------------------------
def export_stage(ctx: Context, qat: TrainRef) -> ExportRef:
    """Export the QAT checkpoint to an INT4 ``.pte``; an MLflow LoggedModel records it."""
    from ..checkpoint import sha256_file
    from ..data.paths import data_paths
    from ..export import PTE, REPORT, TOKENIZER, export_pte
    from ..hf import export_hf
    from ..hf.card import data_section

    hf_dir = "hf"  # the Hugging Face folder beside model.pte
    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    code = ctx.code_for("export")
    key = artifact_key("export", to_dict(params.export), {"checkpoint": qat.checkpoint_sha256}, code)
    folder = stage_folder(ctx.root, params, "export", key)
    output = folder / "output"
    flat = {
        **flat_params(params, "export"),
        "qat.scheme": params.qat.scheme,
        "qat.group_size": params.qat.group_size,
    }

    def produce(run_id: str) -> dict:
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        with _slot(ctx):
            report = export_pte(
                qat.checkpoint,
                work,
                quantize=params.export.quantize,
                max_seq_len=params.export.max_seq_len,
                parity=True,
                threads=params.runtime.threads,
            )
            # The float model (the QAT checkpoint's float weights) as a Hugging Face folder
            # beside the program: logged with it below, in the same LoggedModel (docs/hf.md).
            hf = export_hf(
                qat.checkpoint,
                work / hf_dir,
                data=data_section(params, data_paths(params, root=ctx.root).root, ctx.data_version),
                lineage={
                    "pipeline_run_id": ctx.pipeline_run_id,
                    "export_run_id": run_id,
                    "qat_run_id": qat.run_id,
                    "pte_sha256": report["program_sha256"],
                    "metaflow_pathspec": ctx.pathspec,
                    **{k.removeprefix(L.TAG_PREFIX): v for k, v in ctx.git.items()},
                },
            )
        replace_dir(work, output)
        shutil.rmtree(work, ignore_errors=True)
        summary = export_summary(report)
        tracker.log_metrics(run_id, numbers(summary))
        tracker.set_tags(
            run_id,
            {L.PTE_SHA256: report["program_sha256"], f"{L.TAG_PREFIX}hf_architecture": hf["architecture"]},
        )
        tracker.log_artifacts(run_id, output / REPORT)
        model_id = ensure_logged_model(
            tracker, output / REPORT, report["program_sha256"], source_run_id=run_id, input_run_id=qat.run_id
        )
        tracker.set_tags(run_id, {L.MODEL_ID: model_id})
        return {
            "pte": str(output / PTE),
            "tokenizer": str(output / TOKENIZER),
            "report_path": str(output / REPORT),
            "pte_sha256": report["program_sha256"],
            "checkpoint_sha256": qat.checkpoint_sha256,
            "input_run_id": qat.run_id,
            "summary": summary,
            "model_id": model_id,
        }

    ref = _run_cached(
        ctx,
        tracker,
        ExportRef,
        "export",
        key,
        folder,
        stage_tags(ctx, "export", key, qat, code),
        flat,
        produce,
        check=lambda ref: (
            sha256_file(ref.pte) == ref.pte_sha256
            and (Path(ref.pte).parent / hf_dir / "config.json").is_file()
        ),
    )
    if ref.reused:  # the program's LoggedModel may live in another tracking store
        model_id = ensure_logged_model(
            tracker,
            ref.report_path,
            ref.pte_sha256,
            source_run_id=ref.produced_by_run_id,
            input_run_id=ref.input_run_id,
            model_id=ref.model_id,
        )
        ref = dataclasses.replace(ref, model_id=model_id)
    return ref


def export_summary(report: dict) -> dict:
    """The export report's headline numbers (flat, for MLflow and the card)."""
    ops = report.get("operators", {})
    parity = report.get("parity", {})
    out = {
        "program_bytes": report["program_bytes"],
        "program_mib": report["program_bytes"] / 2**20,
        "fp32_weight_bytes": report["size"].get("fp32_weight_bytes"),
        "int4_weight_bytes_accounted": report["size"].get("int4_weight_bytes_accounted"),
        "export_s": report.get("export_s"),
    }
    for k in ("delegated_linears", "portable_linears", "delegate_calls", "portable_ops", "delegated_ops"):
        if isinstance(ops.get(k), (int, float)):
            out[f"ops_{k}"] = ops[k]
    for k, v in parity.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"parity_{k}"] = v
        elif isinstance(v, bool):
            out[f"parity_{k}"] = float(v)
    return {k: v for k, v in out.items() if v is not None}


# --- eval ---------------------------------------------------------------------------------------
def eval_stage(ctx: Context, qat: TrainRef, export: Optional[ExportRef]) -> EvalRef:
    """lm-eval on the QAT checkpoint and on the exported program, side by side; the full
    results stay in their files (``ref.results()``), not in the reference."""
    from ..eval import flat_metrics, run_eval, write_results

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    code = ctx.code_for("eval")
    inputs = {"checkpoint": qat.checkpoint_sha256, "pte": export.pte_sha256 if export else None}
    key = artifact_key("eval", to_dict(params.eval), inputs, code, data=ctx.data_version)
    folder = stage_folder(ctx.root, params, "eval", key)
    tags = stage_tags(ctx, "eval", key, qat, code)
    if export:
        tags[L.PTE_SHA256] = export.pte_sha256
        tags[L.MODEL_ID] = export.model_id

    def produce(run_id: str) -> dict:
        results, files, summary = {}, {}, {}
        with _slot(ctx):
            results["checkpoint"] = run_eval(params, checkpoint=qat.checkpoint)
            if export:
                results["pte"] = run_eval(params, pte=export.pte, tokenizer=export.tokenizer)
        for label, res in results.items():
            files[label] = str(write_results(res, folder / f"results_{label}.json"))
            metrics = flat_metrics(res, prefix=f"eval_{label}")
            tracker.log_metrics(run_id, metrics)
            if label == "pte" and export and export.model_id:
                log_model_metrics(tracker, run_id, export.model_id, flat_metrics(res))
            summary.update(metrics)  # all of them: a reused run logs the same names
            summary.update(
                {
                    f"eval_{label}/{task}/primary": r["score"]
                    for task, r in res["tasks"].items()
                    if r.get("score") is not None
                }
            )
            tracker.log_artifacts(run_id, files[label], "eval")
        return {"results_files": files, "summary": summary}

    return _run_cached(
        ctx,
        tracker,
        EvalRef,
        "eval",
        key,
        folder,
        tags,
        flat_params(params, "eval"),
        produce,
        check=lambda ref: all(Path(p).is_file() for p in ref.results_files.values()),
    )


# --- device profile -------------------------------------------------------------------------------
def _profiled(ref: ProfileRef) -> bool:
    """Only a profile that ran is cached: errors are retried by the next run."""
    return ref.result.get("status") == "ok"


def device_profile_stage(ctx: Context, export: ExportRef) -> ProfileRef:
    """Send the ``.pte`` to the device lab, wait, record the result on the LoggedModel."""
    from ..device_profile import bytes_metrics, profile_metrics, run_device_profile

    params = ctx.parsed
    tracker = L.Tracker(params, Path(ctx.root))
    code = ctx.code_for("device_profile")
    section = {k: v for k, v in to_dict(params.device_lab).items() if k not in _WAIT_KEYS}
    key = artifact_key("device_profile", section, {"pte": export.pte_sha256}, code)
    folder = stage_folder(ctx.root, params, "device_profile", key)
    tags = {
        **stage_tags(ctx, "device_profile", key, export, code),
        L.PTE_SHA256: export.pte_sha256,
        L.MODEL_ID: export.model_id,
        L.INPUT_CHECKPOINT_SHA256: None,
    }
    tags = {k: v for k, v in tags.items() if v is not None}

    def produce(run_id: str) -> dict:
        with _slot(ctx, local=params.device_lab.queue is None):
            result = run_device_profile(
                params,
                export.pte,
                export.tokenizer,
                folder / "work",
                labels={"pipeline_run_id": ctx.pipeline_run_id, "pte_sha256": export.pte_sha256},
            )
        metrics = {**profile_metrics(result), **bytes_metrics(params, result)}
        tracker.log_metrics(run_id, metrics)
        if export.model_id:
            log_model_metrics(tracker, run_id, export.model_id, metrics)
        tracker.log_dict(run_id, result, "device_profile_result.json")
        tracker.set_tags(run_id, {L.DEVICE_STATUS: result.get("status")})
        return {
            "result": result,
            "summary": metrics,
            "pte_sha256": export.pte_sha256,
            "model_id": export.model_id,
        }

    return _run_cached(
        ctx,
        tracker,
        ProfileRef,
        "device_profile",
        key,
        folder,
        tags,
        flat_params(params, "device_lab"),
        produce,
        check=_profiled,
        keep=_profiled,
    )


# --- the science check --------------------------------------------------------------------------
def dense_baseline_stage(ctx: Context, pretrain: TrainRef) -> DenseRef:
    """Pre-train the dense model with the MoE's active parameters on the same batches,
    export and profile it as the MoE is; the reference carries the comparison."""
    from ..model.accounting import account
    from ..train.dense import dense_counterpart

    params = ctx.parsed
    ensure_data(ctx)
    tracker = L.Tracker(params, Path(ctx.root))
    code = ctx.code_for("dense_baseline")
    dense_model = dense_counterpart(params.model)
    dense_params = dataclasses.replace(params, model=dense_model)
    key = stage_key("pretrain", dense_params, None, ctx.data_version or {}, code)
    folder = stage_folder(ctx.root, params, "dense_baseline", key)
    flat = {**flat_params(dense_params, "model"), **flat_params(params, "pretrain")}
    ref = _run_cached(
        ctx,
        tracker,
        DenseRef,
        "dense_baseline",
        key,
        folder,
        stage_tags(ctx, "dense_baseline", key, None, code),
        flat,
        lambda run_id: _train(ctx, tracker, run_id, dense_params, "pretrain", folder, None),
        check=checkpoint_intact,
    )
    seq = params.pretrain.seq_len
    moe_acc, dense_acc = account(params.model, seq), account(dense_model, seq)
    moe_val, dense_val = pretrain.summary.get("last_val_loss"), ref.summary.get("last_val_loss")
    comparison = {
        "tokens": pretrain.summary.get("tokens"),
        "moe": {
            "model": params.model.name,
            "val_loss": moe_val,
            "active_params": moe_acc.active_params,
            "total_params": moe_acc.total_params,
            "flops_per_token": moe_acc.flops_per_token,
            "tok_per_s": pretrain.summary.get("tok_per_s"),
        },
        "dense": {
            "model": dense_model.name,
            "val_loss": dense_val,
            "active_params": dense_acc.active_params,
            "total_params": dense_acc.total_params,
            "flops_per_token": dense_acc.flops_per_token,
            "tok_per_s": ref.summary.get("tok_per_s"),
        },
        "val_loss_delta": None if moe_val is None or dense_val is None else moe_val - dense_val,
    }
    tracker.log_dict(ref.run_id, comparison, "dense_comparison.json")
    profile = _dense_profile(ctx, tracker, dense_params, ref)
    return dataclasses.replace(ref, comparison=comparison, profile=profile)


def _dense_profile(ctx: Context, tracker: L.Tracker, dense_params: Params, dense: TrainRef) -> ProfileRef:
    """Export the dense-active model as the MoE is exported (same format: post-training
    quantized when the MoE is INT4) and profile it with the same device-lab benchmark, so
    each run checks that the MoE's decode cost follows its active parameters."""
    from ..device_profile import bytes_metrics, profile_metrics, run_device_profile
    from ..export import PTE, TOKENIZER, export_pte

    params = ctx.parsed
    code = ctx.code_for("dense_profile")
    lab = {k: v for k, v in to_dict(params.device_lab).items() if k not in _WAIT_KEYS}
    section = {"export": to_dict(params.export), "qat": to_dict(params.qat), "device_lab": lab}
    key = artifact_key("dense_profile", section, {"checkpoint": dense.checkpoint_sha256}, code)
    folder = stage_folder(ctx.root, params, "dense_profile", key)

    def produce(run_id: str) -> dict:
        out = folder / "export"
        shutil.rmtree(out, ignore_errors=True)
        with _slot(ctx):
            report = export_pte(
                dense.checkpoint,
                out,
                quantize=params.export.quantize,
                max_seq_len=params.export.max_seq_len,
                parity=False,
                ptq=params.qat,
            )
        with _slot(ctx, local=params.device_lab.queue is None):
            result = run_device_profile(
                params,
                out / PTE,
                out / TOKENIZER,
                folder / "work",
                labels={
                    "pipeline_run_id": ctx.pipeline_run_id,
                    "pte_sha256": report["program_sha256"],
                    "model": "dense_baseline",
                },
                op_profile=False,
            )
        metrics = {**profile_metrics(result), **bytes_metrics(dense_params, result)}
        tracker.log_metrics(run_id, metrics)
        tracker.log_dict(run_id, result, "device_profile_result.json")
        tracker.set_tags(
            run_id, {L.PTE_SHA256: report["program_sha256"], L.DEVICE_STATUS: result.get("status")}
        )
        return {
            "result": result,
            "summary": metrics,
            "pte_sha256": report["program_sha256"],
            "checkpoint_sha256": dense.checkpoint_sha256,
        }

    return _run_cached(
        ctx,
        tracker,
        ProfileRef,
        "dense_profile",
        key,
        folder,
        stage_tags(ctx, "dense_profile", key, dense, code),
        flat_params(params, "device_lab"),
        produce,
        check=_profiled,
        keep=_profiled,
    )

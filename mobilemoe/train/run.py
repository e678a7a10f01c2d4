"""One stage in this process (a torchrun rank or a plain call): the wiring of model,
data, trainer, callbacks and checkpoints. Called by :func:`mobilemoe.train.run_stage`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..checkpoint import checkpoint_sha256, load_checkpoint
from ..config import TRAIN_STAGES, Params, to_dict
from ..errors import UserError
from ..io import write_json_atomic
from . import checkpointing as ck
from .callbacks import Checkpointer, MetricsFile, MoELoadMonitor, ProgressBar, SpeedMonitor, Validation
from .distributed import World, barrier, init_distributed
from .fingerprint import fingerprint, qat_meta
from .inputs import STAGE_MIX, open_shards, resolve_tokenizer, shards_digest
from .loader import WindowLoader
from .loop import NonFiniteLoss, Trainer, TrainState
from .result import RESULT, StageResult, finished_result
from .speed import PeakFlops, peak_flops, training_flops_per_token

STAGE_STREAM = {s: i + 1 for i, s in enumerate(TRAIN_STAGES)}  # each stage draws its own windows


def resolve_device(params: Params, world: Optional[World] = None) -> torch.device:
    want = params.runtime.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "runtime.device: cuda requested but no CUDA device is available; set runtime.device: auto or cpu"
        )
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", world.local_rank if world else 0)
    return torch.device("cpu")


def autocast_dtype(params: Params, device: torch.device) -> Optional[torch.dtype]:
    p = params.runtime.precision
    if p == "bf16" or (p == "auto" and device.type == "cuda"):
        return torch.bfloat16  # fp32 master weights and optimizer state; matmuls in bf16
    return None


def prepare_qat(model, params: Params):
    try:
        from ..quant import prepare_qat as _prepare
    except ImportError as e:
        raise UserError(f"qat: mobilemoe.quant.prepare_qat is not available ({e})") from None
    out = _prepare(model, params.qat)
    return model if out is None else out


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_stage_in_process(
    params: Params,
    stage: str,
    mix: Path,
    out_dir: Path,
    init: Optional[Path],
    callbacks: Sequence,
    tokenizer,
    progress: Optional[bool],
) -> StageResult:
    cfg = getattr(params, stage)
    use_cuda = params.runtime.device != "cpu" and torch.cuda.is_available()
    probe = torch.device("cuda" if use_cuda else "cpu")
    world = init_distributed(probe)
    device = resolve_device(params, world)
    threads = max(1, params.runtime.threads // world.local_size)
    if cfg.batch_size % (world.size * cfg.grad_accum):
        raise UserError(
            f"{stage}.batch_size={cfg.batch_size} is not divisible by processes x "
            f"grad_accum = {world.size} x {cfg.grad_accum}"
        )
    with _threads(threads):
        return _run(params, stage, mix, out_dir, init, callbacks, tokenizer, progress, world, device, threads)


def _run(params, stage, mix, out_dir, init, callbacks, tokenizer, progress, world, device, threads):
    cfg = getattr(params, stage)
    shards = open_shards(mix, params.model.vocab_size, cfg.seq_len)
    init_config, init_sha, init_model = None, None, None
    if init is not None:
        # Verifies the manifest and refuses another architecture (names the differing keys).
        init_model, init_config = load_checkpoint(init, expect_model=params.model)
        init_sha = checkpoint_sha256(init)
    tok_path, tok_sha = resolve_tokenizer(mix, shards, tokenizer, init, init_config, params.model.vocab_size)
    data = {"mix": STAGE_MIX[stage], "splits": shards_digest(shards)}
    fp = fingerprint(params, stage, init_sha, data, tok_sha)

    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier(world)
    done = finished_result(out_dir, fp)
    if done is not None:
        return done
    if world.is_main:
        ck.remove_partial_writes(out_dir)
    barrier(world)
    # Every rank reads the same folder; rank 0 alone moves corrupt ones aside first.
    resume = ck.find_resumable(out_dir) if world.is_main else None
    barrier(world)
    if not world.is_main:
        resume = ck.find_resumable(out_dir)

    state, optimizer_state, payload = None, None, None
    # A sharded (FSDP) checkpoint is loaded into the built trainer below (DCP reshards it);
    # until then any model of the right shape will do.
    sharded_resume = resume is not None and ck.is_sharded(resume)
    if resume is not None:
        ck.check_fingerprint(resume, fp)
        state = TrainState.from_dict(ck.read_trainer_state(resume))
    if resume is not None and not sharded_resume:
        model, _ = load_checkpoint(resume, expect_model=params.model)
        payload = ck.read_optimizer(resume)
        optimizer_state = payload["optimizer"]
    elif init_model is not None:
        model = init_model
    else:
        from ..model import build_model

        torch.manual_seed(params.runtime.seed)  # the seeded initialisation of pretraining
        # Under FSDP each rank makes the weights one block at a time as it shards them
        # (mobilemoe.train.fsdp.shard_model): never the whole model on one rank.
        from .fsdp import will_shard

        model = build_model(params.model, device="meta" if will_shard(cfg.parallelism, world) else "cpu")
    del init_model
    if stage == "qat":
        model = prepare_qat(model, params)
    if not any(p.is_meta for p in model.parameters()):
        model.to(device)
    if payload is not None:
        ck.set_rng_state(payload["rng"])
    resumed_from = state.step if state else 0

    meta = {
        "stage": stage,
        "steps": cfg.steps,
        "qat": qat_meta(params, stage),
        "init_checkpoint": str(init) if init else None,
        "init_checkpoint_sha256": init_sha,
        "data": {**data, "folder": str(mix)},
        "seed": params.runtime.seed,
        "train": to_dict(cfg),
        "fingerprint": fp,
    }

    def save(trainer) -> Optional[Path]:
        where = ck.step_folder(out_dir, trainer.state.step)
        if cfg.parallelism == "fsdp":  # every rank writes its shards
            folder = ck.save_sharded_checkpoint(where, trainer, meta, tok_path, world, cfg.parallelism)
        elif world.is_main:
            folder = ck.save_training_checkpoint(where, trainer, meta, tok_path)
        else:
            return None
        if world.is_main:
            ck.prune(out_dir, cfg.keep_checkpoints)
        return folder

    seed = params.runtime.seed
    loader = WindowLoader(
        shards.train,
        cfg.batch_size,
        cfg.seq_len,
        seed,
        world.rank,
        world.size,
        cfg.grad_accum,
        device,
        stream=STAGE_STREAM[stage],
    )
    peak = peak_flops(device, threads) if world.is_main else PeakFlops(None, "rank 0 reports")
    remeasure = (lambda: peak_flops(device, threads)) if device.type == "cpu" else None
    speed = SpeedMonitor(training_flops_per_token(params.model, cfg.seq_len), peak, remeasure)
    cbs: list = [Validation(cfg.eval_every, cfg.steps), speed, MoELoadMonitor()]
    if world.is_main:
        cbs += [
            MetricsFile(out_dir / "metrics.jsonl", resumed_from),
            ProgressBar(stage, cfg.steps, progress),
            *callbacks,
        ]
    checkpointer = Checkpointer(cfg.checkpoint_every, cfg.steps, save)
    cbs.append(checkpointer)
    trainer = Trainer(
        model,
        cfg,
        loader,
        shards.val,
        device=device,
        world=world,
        autocast_dtype=autocast_dtype(params, device),
        callbacks=cbs,
        state=state,
        optimizer_state=optimizer_state,
    )
    if sharded_resume:
        assert resume is not None
        ck.set_rng_state(ck.load_sharded_checkpoint(resume, trainer, world, cfg.parallelism)["rng"])
    try:
        trainer.fit()
    except NonFiniteLoss as e:
        last = ck.list_checkpoints(out_dir)
        kept = f"the last good checkpoint {last[-1][1]} is kept" if last else "no checkpoint was written yet"
        raise NonFiniteLoss(
            e.step,
            f"{stage}: the training loss is not finite (nan/inf) at step "
            f"{e.step} of {cfg.steps}; {kept}. Lower {stage}.lr or raise "
            f"{stage}.warmup_steps, then rerun into a new output folder",
        ) from None

    result = None
    final = out_dir / ck.FINAL
    # The whole-model format whatever the parallelism (gathered from the shards under FSDP).
    ck.save_final_checkpoint(final, trainer, {**meta, "final": True}, tok_path, world)
    if world.is_main:
        result = StageResult(
            stage=stage,
            checkpoint=final,
            checkpoint_sha256=checkpoint_sha256(final),
            out_dir=out_dir,
            state=trainer.state.to_dict(),
            speed=speed.summary(),
            resumed_from_step=resumed_from,
            steps=cfg.steps,
        )
        write_json_atomic(out_dir / RESULT, result.to_dict())
    barrier(world)
    if result is None:
        result = StageResult.from_dict(json.loads((out_dir / RESULT).read_text()))
    return result

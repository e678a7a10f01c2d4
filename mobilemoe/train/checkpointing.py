"""Training checkpoints of one stage: where they live, how they are found after a crash.

    out_dir/
      checkpoints/step_000100/   model.safetensors, config.json, tokenizer.json,
                                 optimizer.pt (AdamW state, RNG, loader position),
                                 trainer_state.json (step, loss curves, ...), manifest.json
      checkpoints/corrupt/       checkpoints that failed verification, moved aside (kept)
      final/                     the stage's output: weights, config, tokenizer, state
      metrics.jsonl, result.json

Every folder is written by :func:`mobilemoe.checkpoint.save_checkpoint` (a temporary
sibling renamed into place after its manifest), so a kill mid-write leaves the previous
checkpoints untouched plus a hidden ``.step_*.tmp-*`` folder that the next start removes.
On resume the newest checkpoint that passes ``verify`` is used; newer ones that fail
(truncated, corrupt) are moved to ``checkpoints/corrupt/`` with a warning.

Under ``parallelism: fsdp`` the step checkpoints are *sharded*: instead of
``model.safetensors`` and ``optimizer.pt`` they hold ``dcp/`` (``torch.distributed.checkpoint``:
every rank writes its shards of the weights and AdamW state, ``.metadata`` maps them) and
``resume.pt`` (RNG, loader position). All ranks write into the same hidden temporary folder;
rank 0 adds the JSON files and the manifest and renames it, as for any checkpoint. Any
checkpoint resumes under any parallelism and process count: a sharded one is resharded by
DCP on load (into FSDP shards or whole tensors), a whole one is sharded after loading.
The stage's ``final/`` is always the whole-model format that later stages read.

A checkpoint records the stage's *fingerprint* (the params that decide the weights, the
input checkpoint and data hashes); resuming into an out_dir whose checkpoints have
another fingerprint is refused, so two configurations never mix in one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from .. import checkpoint as model_ckpt
from ..checkpoint import CheckpointError, read_config, save_checkpoint, verify, write_manifest
from ..errors import UserError

CHECKPOINTS = "checkpoints"
FINAL = "final"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
SHARDS = "dcp"  # torch.distributed.checkpoint folder of a sharded checkpoint
RESUME_STATE = "resume.pt"  # a sharded checkpoint's RNG and loader position
_STEP = re.compile(r"^step_(\d+)$")
_PARTIAL = re.compile(r"^\.(step_\d+|final)\.(tmp|old)-")


class CheckpointWarning(UserWarning):
    pass


def step_folder(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:06d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(out_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return sorted(found)


def remove_partial_writes(out_dir: Path) -> None:
    """Delete temporary folders left by a write that was killed (never a finished one)."""
    for parent in (Path(out_dir), Path(out_dir) / CHECKPOINTS):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.is_dir() and _PARTIAL.match(p.name):
                    shutil.rmtree(p, ignore_errors=True)


def find_resumable(out_dir: Path) -> Optional[Path]:
    """The newest checkpoint that verifies; failing newer ones are moved aside, with a warning."""
    for _step, path in reversed(list_checkpoints(out_dir)):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            aside = Path(out_dir) / CHECKPOINTS / "corrupt" / f"{path.name}-{stamp}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            path.rename(aside)
            warnings.warn(
                f"checkpoint {path} failed verification ({e}); moved to {aside} and "
                "resuming from the previous checkpoint",
                CheckpointWarning,
                stacklevel=2,
            )
    return None


def prune(out_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints."""
    for _, path in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(
    folder: Path, trainer, meta: dict, tokenizer: Path, with_optimizer: bool = True
) -> Path:
    state = trainer.state
    torch_files = None
    if with_optimizer:
        torch_files = {
            OPTIMIZER: {
                "optimizer": trainer.optimizer.state_dict(),
                "rng": rng_state(),
                # The loader is a pure function of (seed, stream, step): its position is the step.
                "loader": {"seed": trainer.loader.seed, "stream": trainer.loader.stream, "step": state.step},
            }
        }
    save_checkpoint(
        folder,
        trainer.model,
        {**meta, "step": state.step},
        tokenizer=tokenizer,
        extra_files={TRAINER_STATE: state.to_dict()},
        torch_files=torch_files,
    )
    return Path(folder)


def read_trainer_state(folder: Path) -> dict:
    path = Path(folder) / TRAINER_STATE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({e})") from None


def read_optimizer(folder: Path) -> dict:
    path = Path(folder) / OPTIMIZER
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; this checkpoint cannot be resumed from")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_fingerprint(folder: Path, fingerprint: dict[str, Any]) -> None:
    have = read_config(folder).get("fingerprint")
    if have == fingerprint:
        return
    have = have or {}
    diff = sorted(k for k in set(have) | set(fingerprint) if have.get(k) != fingerprint.get(k))
    out_dir = Path(folder).parent.parent
    raise UserError(
        f"{out_dir}: holds checkpoints of a different configuration ({', '.join(diff[:6])} "
        f"differ from {folder}); use another output folder, or delete {out_dir / CHECKPOINTS} "
        "to start this stage over"
    )


# -- sharded checkpoints (FSDP) -------------------------------------------------------------
def is_sharded(folder: Path) -> bool:
    return (Path(folder) / SHARDS / ".metadata").is_file()


def _sharded_state(model, optimizer) -> dict:
    """Model and optimizer state keyed by parameter name: DTensor shards under FSDP, whole
    tensors otherwise (DCP reshards between the two on load)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it "assumes" a single process when there is no process group: here
    that is the plan (one process, ``no_dist``), not a surprise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_sharded_checkpoint(
    folder: Path, trainer, meta: dict, tokenizer: Path, world, parallelism: str
) -> Optional[Path]:
    """Every rank writes its shards; rank 0 completes the folder (JSON, manifest, rename).

    A collective: every rank calls it. Returns the folder on rank 0, None elsewhere."""
    import torch.distributed.checkpoint as dcp

    from ..config.base import to_dict
    from .distributed import barrier, broadcast_object

    folder = Path(folder)
    tmp_name: Optional[str] = None
    if world.is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent)
        os.chmod(tmp_name, 0o755)
    tmp = Path(broadcast_object(tmp_name, world))
    try:
        state = _sharded_state(trainer.model, trainer.optimizer)
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=str(tmp / SHARDS), no_dist=not world.distributed)
        barrier(world)
        if world.is_main:
            step = trainer.state.step
            config = {
                "format": model_ckpt.FORMAT,
                "model": to_dict(trainer.model.cfg),
                **meta,
                "step": step,
                "sharded": {
                    "format": "torch.distributed.checkpoint",
                    "parallelism": parallelism,
                    "world_size": world.size,
                },
            }
            shutil.copyfile(tokenizer, tmp / model_ckpt.TOKENIZER)
            config["tokenizer_sha256"] = model_ckpt.sha256_file(tmp / model_ckpt.TOKENIZER)
            (tmp / model_ckpt.CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer.state.to_dict(), indent=1, sort_keys=True))
            loader = {"seed": trainer.loader.seed, "stream": trainer.loader.stream, "step": step}
            torch.save({"rng": rng_state(), "loader": loader}, tmp / RESUME_STATE)
            _fsync_tree(tmp)
            write_manifest(tmp)
            if folder.exists():  # the same step written again (a rerun): swap it whole
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        barrier(world)
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder if world.is_main else None


def load_sharded_checkpoint(folder: Path, trainer, world, parallelism: str) -> dict:
    """Load a sharded checkpoint's weights and optimizer state into ``trainer`` (any
    process count, sharded or not: DCP reshards); returns its ``resume.pt`` payload."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    folder = Path(folder)
    written = read_config(folder).get("sharded") or {}
    state = _sharded_state(trainer.model, trainer.optimizer)
    try:
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(folder / SHARDS), no_dist=not world.distributed)
    except Exception as e:  # noqa: BLE001 - DCP raises many kinds; one message names the case
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{folder}: the sharded checkpoint written by {written.get('world_size', '?')} process(es) "
            f"({written.get('parallelism', '?')}) does not load into this run ({world.size} "
            f"process(es), {parallelism}): {reason}. Move it aside to resume from an earlier "
            f"checkpoint, or delete {folder.parent} to start this stage over"
        ) from None
    set_model_state_dict(trainer.model, state["model"])
    set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optim"])
    path = folder / RESUME_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; this checkpoint cannot be resumed from")
    return torch.load(path, map_location="cpu", weights_only=False)


def save_final_checkpoint(folder: Path, trainer, meta: dict, tokenizer: Path, world) -> Optional[Path]:
    """The stage's output in the whole-model format later stages read, whatever the
    parallelism: under FSDP the weights are gathered to rank 0 first (a collective)."""
    from .fsdp import FullWeights, full_model_state, is_sharded

    if not is_sharded(trainer.model):
        if not world.is_main:
            return None
        return save_training_checkpoint(folder, trainer, meta, tokenizer, with_optimizer=False)
    state = full_model_state(trainer.model)
    if not world.is_main:
        return None
    save_checkpoint(
        folder,
        FullWeights(trainer.model.cfg, state),
        {**meta, "step": trainer.state.step},
        tokenizer=tokenizer,
        extra_files={TRAINER_STATE: trainer.state.to_dict()},
    )
    return Path(folder)

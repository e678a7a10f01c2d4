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

A checkpoint records the stage's *fingerprint* (the params that decide the weights, the
input checkpoint and data hashes); resuming into an out_dir whose checkpoints have
another fingerprint is refused, so two configurations never mix in one run.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import CheckpointError, read_config, save_checkpoint, verify
from ..errors import UserError

CHECKPOINTS = "checkpoints"
FINAL = "final"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
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

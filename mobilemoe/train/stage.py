"""``run_stage``: one training stage end to end, resumable, in-process or under torchrun.

    from mobilemoe.train import run_stage
    r = run_stage(params, "pretrain", data_dir="data", out_dir="runs/pretrain")
    r = run_stage(params, "midtrain", data_dir="data", out_dir="runs/midtrain",
                  init_checkpoint=r.checkpoint)
    r.checkpoint, r.checkpoint_sha256, r.summary(), r.history_for_plots()

* pretrain starts from a seeded initialisation (``runtime.seed``); midtrain, sft and qat
  from the previous stage's checkpoint (``load_checkpoint(..., expect_model=params.model)``
  refuses another architecture); qat wraps the model with
  ``mobilemoe.quant.prepare_qat(model, params.qat)`` (fake quantization) first.
* Rerunning with the same ``out_dir`` resumes from the newest valid checkpoint and ends
  with the weights an uninterrupted run has (bit-identical on CPU); a finished stage
  returns its result without training again.
* ``<stage>.nproc > 1`` launches torchrun with that many processes (DDP, same global
  batch); ``callbacks`` then receive the metrics after the run (replayed from its history).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..checkpoint import checkpoint_sha256, read_config
from ..config import Params, parse_params, to_dict
from ..config.base import flatten
from ..errors import UserError
from . import checkpointing as ck
from .inputs import check_init_checkpoint, mix_folder

STAGES = ("pretrain", "midtrain", "sft", "qat")
STAGE_STREAM = {s: i + 1 for i, s in enumerate(STAGES)}  # each stage draws its own windows
# Settings that do not change the trained weights (beyond float summation order for
# grad_accum/nproc): a resume may change them.
NON_WEIGHT_KEYS = ("nproc", "grad_accum", "log_every", "eval_every", "eval_batches",
                   "checkpoint_every", "keep_checkpoints")
RESULT = "result.json"
LAUNCH_ERROR = "launch_error.json"


@dataclass
class StageResult:
    stage: str
    checkpoint: Path  # out_dir/final
    checkpoint_sha256: str
    out_dir: Path
    state: dict  # TrainState.to_dict(): loss curves, logs, expert load
    speed: dict = field(default_factory=dict)  # tok_per_s, flop_per_s, mfu, peak_*
    resumed_from_step: int = 0
    steps: int = 0

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return [tuple(r) for r in self.state.get("val_loss", [])]

    @property
    def train_curve(self) -> list[tuple[int, float]]:
        return [tuple(r) for r in self.state.get("train_loss", [])]

    def summary(self) -> dict[str, Any]:
        val, train = self.val_curve, self.train_curve
        out: dict[str, Any] = {
            "steps": self.steps, "tokens": self.state.get("tokens", 0),
            "train_s": self.state.get("train_s", 0.0),
            "first_val_loss": val[0][1] if val else None,
            "last_val_loss": val[-1][1] if val else None,
            "final_train_loss": train[-1][1] if train else None,
            "resumed_from_step": self.resumed_from_step,
        }
        if val:
            out["val_loss_drop"] = val[0][1] - val[-1][1]
        for k in ("tok_per_s", "flop_per_s", "mfu", "peak_flop_per_s"):
            if self.speed.get(k) is not None:
                out[k] = self.speed[k]
        loads = self.state.get("expert_load") or []
        if loads:
            last = loads[-1]["layers"]
            out["expert_load_max_over_mean"] = max(l["max_over_mean"] for l in last)
            out["expert_load_cv_mean"] = sum(l["cv"] for l in last) / len(last)
        return out

    def history_for_plots(self) -> dict:
        loads: dict[str, list] = {}
        for row in self.state.get("expert_load") or []:
            for i, layer in enumerate(row["layers"]):
                loads.setdefault(str(i), []).append((row["step"], layer["max_over_mean"]))
        return {"train": self.train_curve, "val": self.val_curve, "expert_load": loads}

    def to_dict(self) -> dict:
        return {"stage": self.stage, "checkpoint": str(self.checkpoint),
                "checkpoint_sha256": self.checkpoint_sha256, "out_dir": str(self.out_dir),
                "state": self.state, "speed": self.speed,
                "resumed_from_step": self.resumed_from_step, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        return cls(stage=d["stage"], checkpoint=Path(d["checkpoint"]),
                   checkpoint_sha256=d["checkpoint_sha256"], out_dir=Path(d["out_dir"]),
                   state=d["state"], speed=d.get("speed", {}),
                   resumed_from_step=d.get("resumed_from_step", 0), steps=d.get("steps", 0))


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def qat_meta(params: Params, stage: str) -> Optional[dict]:
    if stage != "qat":
        return None
    q = params.qat
    return {"scheme": q.scheme, "group_size": q.group_size,
            "quantize_embedding": q.quantize_embedding}


def fingerprint(params: Params, stage: str, init_sha: Optional[str], data: dict,
                tokenizer_sha: str) -> dict:
    section = {k: v for k, v in to_dict(getattr(params, stage)).items() if k not in NON_WEIGHT_KEYS}
    return _jsonable(flatten({"stage": stage, "train": section, "model": to_dict(params.model),
                              "seed": params.runtime.seed, "precision": params.runtime.precision,
                              "init_checkpoint_sha256": init_sha, "data": data,
                              "tokenizer_sha256": tokenizer_sha}))


def _finished(out_dir: Path, fp: dict) -> Optional[StageResult]:
    """The result of an already finished run of this configuration, if intact."""
    path, final = out_dir / RESULT, out_dir / ck.FINAL
    if not path.is_file() or not final.is_dir():
        return None
    try:
        result = StageResult.from_dict(json.loads(path.read_text()))
        if read_config(final).get("fingerprint") != fp:
            return None
        if checkpoint_sha256(final) != result.checkpoint_sha256:
            return None
    except (ValueError, KeyError, UserError):
        return None
    return result


def _replay(callbacks: Sequence, state: dict) -> None:
    """Feed a finished run's metrics to callbacks that could not attach to it (torchrun)."""
    rows = [(r[0], 0, "on_eval", {"val_loss": r[1]}) for r in state.get("val_loss", [])]
    rows += [(r["step"], 1, "on_log", {k: v for k, v in r.items() if k != "step"})
             for r in state.get("logs", [])]
    for step, _, hook, metrics in sorted(rows, key=lambda r: (r[0], r[1])):
        for cb in callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(step, metrics)


def run_stage(params: Params, stage: str, data_dir=None, out_dir=None, init_checkpoint=None,
              callbacks: Sequence = (), tokenizer=None,
              progress: Optional[bool] = None) -> StageResult:
    """Train one stage into ``out_dir`` (resuming if it holds checkpoints); see module doc."""
    if stage not in STAGES:
        raise UserError(f"unknown training stage {stage!r} (one of {', '.join(STAGES)})")
    if out_dir is None:
        raise UserError(f"{stage}: an output folder is required (--out)")
    out_dir = Path(out_dir).resolve()
    cfg = getattr(params, stage)
    init = check_init_checkpoint(stage, init_checkpoint)
    mix = mix_folder(params, stage, data_dir)
    from .distributed import launched_by_torchrun

    if cfg.nproc > 1 and not launched_by_torchrun():
        return _launch(params, stage, mix, out_dir, init, callbacks, tokenizer)
    from .run import train_stage_in_process

    return train_stage_in_process(params, stage, mix, out_dir, init, callbacks, tokenizer, progress)


def _launch(params: Params, stage: str, mix: Path, out_dir: Path, init: Optional[Path],
            callbacks: Sequence, tokenizer) -> StageResult:
    """Run the stage under torchrun with ``nproc`` processes; rank 0 writes the result."""
    from .distributed import torchrun_command

    cfg = getattr(params, stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    launch_dir = out_dir / "launch"
    launch_dir.mkdir(exist_ok=True)
    params_file = launch_dir / "params.json"
    _write_json_atomic(params_file, params.to_dict())
    (launch_dir / LAUNCH_ERROR).unlink(missing_ok=True)
    args = ["--params-json", str(params_file), "--stage", stage, "--out", str(out_dir),
            "--data", str(mix)]
    if init is not None:
        args += ["--init", str(init)]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    env = dict(os.environ)
    per_rank = max(1, params.runtime.threads // cfg.nproc)
    env["OMP_NUM_THREADS"] = str(per_rank)  # torchrun would otherwise force 1 with a warning
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(torchrun_command(cfg.nproc, args), env=env)
    if proc.returncode != 0:
        err = launch_dir / LAUNCH_ERROR
        if err.is_file():
            info = json.loads(err.read_text())
            if info.get("kind") == "NonFiniteLoss":
                from .loop import NonFiniteLoss

                raise NonFiniteLoss(info["step"], info["message"])
            raise UserError(info["message"])
        raise RuntimeError(f"{stage}: torchrun with {cfg.nproc} processes exited with code "
                           f"{proc.returncode}; see its output above. Rerunning resumes from the "
                           f"latest checkpoint in {out_dir}")
    result = StageResult.from_dict(json.loads((out_dir / RESULT).read_text()))
    _replay(callbacks, result.state)
    return result


def load_params_json(path) -> Params:
    return parse_params(json.loads(Path(path).read_text()), str(path))


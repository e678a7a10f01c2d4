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
* Every callback handed in is closed (``close()``) when ``run_stage`` returns or raises,
  after ``on_error(exc)`` when it raises, whichever path ran (trained, resumed, already
  finished, torchrun), so a metrics sink never loses the rows of a failed run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from ..config import TRAIN_STAGES, Params, parse_params
from ..errors import UserError
from ..io import write_json_atomic
from .callbacks import finish_callbacks
from .distributed import launched_by_torchrun, torchrun_command
from .inputs import check_init_checkpoint, mix_folder
from .result import RESULT, StageResult
from .run import train_stage_in_process

STAGES = TRAIN_STAGES  # the one tuple of training stage names lives in mobilemoe.config
LAUNCH_ERROR = "launch_error.json"


def _replay(callbacks: Sequence, state: dict) -> None:
    """Feed a finished run's metrics to callbacks that could not attach to it (torchrun)."""
    rows = [(r[0], 0, "on_eval", {"val_loss": r[1]}) for r in state.get("val_loss", [])]
    rows += [
        (r["step"], 1, "on_log", {k: v for k, v in r.items() if k != "step"}) for r in state.get("logs", [])
    ]
    for step, _, hook, metrics in sorted(rows, key=lambda r: (r[0], r[1])):
        for cb in callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(step, metrics)


class _FinishOnce:
    """A caller's callback as ``run_stage`` hands it on: every hook passes through, but
    ``on_error``/``close`` reach it once, from the trainer or, on the paths that train
    nothing (finished stage, refused input, torchrun), from ``run_stage`` itself."""

    def __init__(self, callback):
        self._callback, self._errored, self._closed = callback, False, False

    def __getattr__(self, name: str):
        return getattr(self._callback, name)

    def on_error(self, exc: BaseException) -> None:
        fn = getattr(self._callback, "on_error", None)
        if not self._errored and fn is not None:
            self._errored = True
            fn(exc)

    def close(self) -> None:
        fn = getattr(self._callback, "close", None)
        if not self._closed and fn is not None:
            self._closed = True
            fn()


def run_stage(
    params: Params,
    stage: str,
    data_dir=None,
    out_dir=None,
    init_checkpoint=None,
    callbacks: Sequence = (),
    tokenizer=None,
    progress: Optional[bool] = None,
) -> StageResult:
    """Train one stage into ``out_dir`` (resuming if it holds checkpoints); see module doc."""
    wrapped = [_FinishOnce(cb) for cb in callbacks]
    try:
        result = _run_stage(params, stage, data_dir, out_dir, init_checkpoint, wrapped, tokenizer, progress)
    except BaseException as exc:
        finish_callbacks(wrapped, exc)
        raise
    finish_callbacks(wrapped)
    return result


def _run_stage(
    params: Params,
    stage: str,
    data_dir,
    out_dir,
    init_checkpoint,
    callbacks: Sequence,
    tokenizer,
    progress: Optional[bool],
) -> StageResult:
    if stage not in STAGES:
        raise UserError(f"unknown training stage {stage!r} (one of {', '.join(STAGES)})")
    if out_dir is None:
        raise UserError(f"{stage}: an output folder is required (--out)")
    out_dir = Path(out_dir).resolve()
    cfg = getattr(params, stage)
    init = check_init_checkpoint(stage, init_checkpoint, params, out_dir)  # or <stage>.init_from
    mix = mix_folder(params, stage, data_dir)
    if cfg.nproc > 1 and not launched_by_torchrun():
        return _launch(params, stage, mix, out_dir, init, callbacks, tokenizer)
    return train_stage_in_process(params, stage, mix, out_dir, init, callbacks, tokenizer, progress)


def _launch(
    params: Params, stage: str, mix: Path, out_dir: Path, init: Optional[Path], callbacks: Sequence, tokenizer
) -> StageResult:
    """Run the stage under torchrun with ``nproc`` processes; rank 0 writes the result.

    The callbacks cannot attach to the ranks: they get the run's metrics replayed from its
    history afterwards.
    """
    result = _launch_torchrun(params, stage, mix, out_dir, init, tokenizer)
    _replay(callbacks, result.state)
    return result


def _launch_torchrun(
    params: Params, stage: str, mix: Path, out_dir: Path, init: Optional[Path], tokenizer
) -> StageResult:
    cfg = getattr(params, stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    launch_dir = out_dir / "launch"
    launch_dir.mkdir(exist_ok=True)
    params_file = launch_dir / "params.json"
    write_json_atomic(params_file, params.to_dict())
    (launch_dir / LAUNCH_ERROR).unlink(missing_ok=True)
    args = ["--params-json", str(params_file), "--stage", stage, "--out", str(out_dir), "--data", str(mix)]
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
        raise RuntimeError(
            f"{stage}: torchrun with {cfg.nproc} processes exited with code "
            f"{proc.returncode}; see its output above. Rerunning resumes from the "
            f"latest checkpoint in {out_dir}"
        )
    return StageResult.from_dict(json.loads((out_dir / RESULT).read_text()))


def load_params_json(path) -> Params:
    return parse_params(json.loads(Path(path).read_text()), str(path))

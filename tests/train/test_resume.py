"""Crash safety: SIGKILL mid-stage then rerun = an uninterrupted run, bit for bit (CPU);
a corrupt latest checkpoint falls back to the previous one with a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import PRETRAIN, same_weights, smoke_params

from mobilemoe.train import run_stage
from mobilemoe.train.checkpointing import CheckpointWarning

HERE = Path(__file__).resolve().parent

# The child trains the same configuration and stops dead (SIGKILL from the test) at step 6:
# after the step-4 checkpoint, with two more steps of work that the kill throws away.
CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    import torch
    torch.set_num_threads(1)
    from train_helpers import PRETRAIN, smoke_params
    from mobilemoe.train import run_stage

    class StallAt6:
        def on_step_end(self, trainer):
            if trainer.state.step == 6:
                print("STALLED", flush=True)
                time.sleep(600)

    run_stage(smoke_params(*PRETRAIN), "pretrain", data_dir={data!r}, out_dir={out!r},
              callbacks=[StallAt6()], progress=False)
""")


def _kill_at_step_6(data_root: Path, out: Path) -> None:
    code = CHILD.format(here=str(HERE), data=str(data_root), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STALLED", f"child ended early (rc {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_stage_then_rerun_matches_uninterrupted(pretrained, data_root, tmp_path):
    out = tmp_path / "killed"
    _kill_at_step_6(data_root, out)
    assert not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004"]

    resumed = run_stage(smoke_params(*PRETRAIN), "pretrain", data_dir=data_root, out_dir=out, progress=False)
    assert resumed.resumed_from_step == 4
    assert same_weights(resumed.checkpoint, pretrained.checkpoint)  # bit-identical
    assert resumed.train_curve == pretrained.train_curve
    assert resumed.val_curve == pretrained.val_curve


def test_corrupt_latest_checkpoint_falls_back_to_previous(pretrained, data_root, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    # The uninterrupted run's checkpoints 8 and 12 minus its final: as if killed after 12.
    shutil.copytree(pretrained.out_dir / "checkpoints", out / "checkpoints")
    latest = out / "checkpoints" / "step_000012" / "model.safetensors"
    with open(latest, "r+b") as f:  # truncated mid-file
        f.truncate(latest.stat().st_size // 2)
    # A half-written checkpoint a kill left behind is cleaned away.
    (out / "checkpoints" / ".step_000016.tmp-abc").mkdir()

    with pytest.warns(CheckpointWarning, match="step_000012.*truncated"):
        resumed = run_stage(
            smoke_params(*PRETRAIN), "pretrain", data_dir=data_root, out_dir=out, progress=False
        )
    assert resumed.resumed_from_step == 8
    assert same_weights(resumed.checkpoint, pretrained.checkpoint)
    moved = list((out / "checkpoints" / "corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("step_000012")  # kept for inspection
    assert not (out / "checkpoints" / ".step_000016.tmp-abc").exists()


def test_resume_refuses_a_different_configuration(pretrained, data_root, tmp_path):
    import shutil

    from mobilemoe.errors import UserError

    out = tmp_path / "other"
    shutil.copytree(pretrained.out_dir / "checkpoints", out / "checkpoints")
    with pytest.raises(UserError, match=r"different configuration \(train.lr"):
        run_stage(
            smoke_params(*PRETRAIN, "pretrain.lr=0.001"),
            "pretrain",
            data_dir=data_root,
            out_dir=out,
            progress=False,
        )
    # Performance-only settings may change on resume (e.g. logging cadence).
    r = run_stage(
        smoke_params(*PRETRAIN, "pretrain.log_every=3"),
        "pretrain",
        data_dir=data_root,
        out_dir=out,
        progress=False,
    )
    assert r.resumed_from_step == 12

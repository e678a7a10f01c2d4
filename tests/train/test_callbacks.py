"""The callback contract's end: ``on_error(exc)`` and ``close()`` are always called, so a
metrics sink keeps the rows of a run that failed (the ones a user needs to debug it)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import PRETRAIN, smoke_params

from mobilemoe.train import NonFiniteLoss, run_stage


class PoisonAfter6:
    """Makes the run diverge: NaN weights after step 6 (the NaN guard stops it at 7)."""

    def on_step_end(self, trainer):
        if trainer.state.step == 6:
            with torch.no_grad():
                trainer.model.norm.weight.fill_(float("nan"))


class Recorder:
    def __init__(self):
        self.calls = []

    def on_log(self, step, metrics):
        self.calls.append(("log", step))

    def on_error(self, exc):
        self.calls.append(("error", type(exc).__name__))

    def close(self):
        self.calls.append(("close",))


def test_a_diverged_run_reaches_its_callbacks_error_then_close(data_root, tmp_path):
    rec = Recorder()
    with pytest.raises(NonFiniteLoss):
        run_stage(
            smoke_params(*PRETRAIN),
            "pretrain",
            data_dir=data_root,
            out_dir=tmp_path / "o",
            callbacks=[PoisonAfter6(), rec],
            progress=False,
        )
    assert ("log", 2) in rec.calls
    assert rec.calls[-2:] == [("error", "NonFiniteLoss"), ("close",)]  # each once, in order
    assert rec.calls.count(("close",)) == 1


def test_close_is_called_once_on_every_path(pretrained, data_root, tmp_path):
    finished = Recorder()  # the stage is already finished: nothing trains, close still comes
    run_stage(
        smoke_params(*PRETRAIN),
        "pretrain",
        data_dir=data_root,
        out_dir=pretrained.out_dir,
        callbacks=[finished],
        progress=False,
    )
    assert finished.calls == [("close",)]
    refused = Recorder()  # bad input: refused before any training
    with pytest.raises(Exception, match="init"):
        run_stage(
            smoke_params(),
            "midtrain",
            data_dir=data_root,
            out_dir=tmp_path / "m",
            init_checkpoint=tmp_path / "missing",
            callbacks=[refused],
            progress=False,
        )
    assert [c[0] for c in refused.calls] == ["error", "close"]


def test_the_mlflow_sink_keeps_the_metric_rows_of_a_diverged_run(data_root, tmp_path, monkeypatch):
    from mobilemoe import lineage as L
    from mobilemoe.pipeline import MlflowSink

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = smoke_params(*PRETRAIN)
    tracker = L.Tracker(params, tmp_path)
    run_id = tracker.start_run("pretrain", {L.STAGE: "pretrain"})
    sink = MlflowSink(tracker, run_id)  # batches of 50 rows: none would be sent before the end
    with pytest.raises(NonFiniteLoss):
        run_stage(
            params,
            "pretrain",
            data_dir=data_root,
            out_dir=tmp_path / "o",
            callbacks=[PoisonAfter6(), sink],
            progress=False,
        )
    tracker.end_run(run_id, "FAILED")
    losses = tracker.client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in losses) == [2, 4, 6]  # every log step before the divergence
    val = tracker.client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in val) == [0, 4]

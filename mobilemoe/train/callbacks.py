"""Trainer callbacks (OLMo-core style): every side effect of training is a named callback.

A callback is any object with some of these methods (all optional, duck-typed, so a
metrics sink needs no base class):

    on_train_start(trainer)          before the first step (after a resume: at its step)
    on_step_end(trainer)             after each optimizer step (trainer.state.step = steps done)
    collect_metrics(trainer, m)      add entries to the metrics dict of a log step
    on_log(step, metrics)            a log step's metrics (numbers only)
    on_eval(step, metrics)           {"val_loss": ...} after a validation pass
    on_checkpoint(step, path)        a checkpoint was written
    on_train_end(trainer)            after the last step (not called when training fails)
    on_error(exc)                    training failed with ``exc`` (it propagates afterwards)
    close()                          the run is over, whatever happened: flush, release

``on_error`` and ``close`` are always called (the trainer runs its loop in try/finally;
``run_stage`` closes the callbacks of the paths that train nothing: a finished stage, a
torchrun launch, bad input), so a sink can flush the rows of a diverged run. An error
raised by ``on_error`` or by ``close`` after a failure is reported as a warning, never in
place of the failure itself.

Order matters and is the list order: validation runs before checkpointing at the same
step, so the checkpoint's history holds that step's validation loss.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..io import write_text_atomic
from .speed import PeakFlops


class Callback:
    """Optional base class: documents the hooks; the trainer does not require it."""

    def on_train_start(self, trainer) -> None: ...
    def on_step_end(self, trainer) -> None: ...
    def collect_metrics(self, trainer, metrics: dict) -> None: ...
    def on_log(self, step: int, metrics: dict) -> None: ...
    def on_eval(self, step: int, metrics: dict) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_train_end(self, trainer) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...
    def close(self) -> None: ...


def finish_callbacks(callbacks: Sequence, exc: Optional[BaseException] = None) -> None:
    """End the callbacks' run: ``on_error(exc)`` (when it failed), then ``close()``, for
    every callback even if one of them raises. After a failure their own errors become
    warnings (the failure matters more); after a success the first one is raised."""
    first: Optional[BaseException] = None
    hooks = (("on_error", (exc,)), ("close", ())) if exc is not None else (("close", ()),)
    for cb in callbacks:
        for hook, args in hooks:
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - reported below, the others still run
                if exc is not None:
                    warnings.warn(
                        f"{type(cb).__name__}.{hook} failed while handling {type(exc).__name__}: {e}",
                        stacklevel=2,
                    )
                elif first is None:
                    first = e
    if first is not None:
        raise first


class Validation(Callback):
    """Validation loss on fixed windows at step 0, every ``every`` steps and at the end."""

    def __init__(self, every: int, total_steps: int):
        self.every, self.total_steps = every, total_steps

    def on_train_start(self, trainer) -> None:
        if trainer.state.step == 0:
            trainer.run_validation()

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if step % self.every == 0 or step == self.total_steps:
            trainer.run_validation()


class SpeedMonitor(Callback):
    """Tokens/s, achieved FLOP/s and MFU over each log interval.

    Time spent validating or checkpointing is excluded (``trainer.excluded_s``), so the
    numbers describe training steps. Reported at log steps only: no per-step host syncs.
    """

    def __init__(
        self, train_flops_per_token: int, peak: PeakFlops, remeasure: Optional[Callable[[], PeakFlops]] = None
    ):
        self.train_flops_per_token = train_flops_per_token
        self.peak = peak
        # CPU ceilings measured on a shared machine vary: the summary uses the best of the
        # start and end measurements (the per-log MFU uses the start one).
        self.remeasure = remeasure
        self._t0 = self._excluded0 = 0.0
        self._tokens0 = 0
        self.intervals: list[tuple[float, int]] = []  # (seconds, tokens) per log interval

    def on_train_start(self, trainer) -> None:
        self._t0, self._excluded0 = time.perf_counter(), trainer.excluded_s
        self._tokens0 = trainer.state.tokens

    def collect_metrics(self, trainer, metrics: dict) -> None:
        now = time.perf_counter()
        dt_s = (now - self._t0) - (trainer.excluded_s - self._excluded0)
        tokens = trainer.state.tokens - self._tokens0
        self._t0, self._excluded0, self._tokens0 = now, trainer.excluded_s, trainer.state.tokens
        if dt_s <= 0 or tokens <= 0:
            return
        self.intervals.append((dt_s, tokens))
        tok_per_s = tokens / dt_s
        metrics["tok_per_s"] = tok_per_s
        metrics["flop_per_s"] = tok_per_s * self.train_flops_per_token
        if self.peak.flop_per_s:
            metrics["mfu"] = metrics["flop_per_s"] / self.peak.flop_per_s

    def on_train_end(self, trainer) -> None:
        if self.remeasure is not None and self.peak.flop_per_s:
            again = self.remeasure()
            if again.flop_per_s and again.flop_per_s > self.peak.flop_per_s:
                self.peak = again

    def summary(self) -> dict:
        """Throughput over the whole run, skipping the first interval (warm-up) if possible."""
        rows = self.intervals[1:] if len(self.intervals) > 1 else self.intervals
        if not rows:
            return {}
        seconds, tokens = sum(r[0] for r in rows), sum(r[1] for r in rows)
        flop_per_s = tokens / seconds * self.train_flops_per_token
        out: dict[str, Any] = {
            "tok_per_s": tokens / seconds,
            "flop_per_s": flop_per_s,
            "peak_flop_per_s": self.peak.flop_per_s,
            "peak_source": self.peak.source,
        }
        if self.peak.flop_per_s:
            out["mfu"] = flop_per_s / self.peak.flop_per_s
        return out


def load_stats(load_E: list[float]) -> dict:
    """max/mean load and coefficient of variation of one layer's per-expert token counts."""
    n = len(load_E)
    mean = sum(load_E) / n
    if mean <= 0:
        return {"max_over_mean": float("nan"), "cv": float("nan")}
    var = sum((x - mean) ** 2 for x in load_E) / n
    return {"max_over_mean": max(load_E) / mean, "cv": math.sqrt(var) / mean}


class MoELoadMonitor(Callback):
    """Per-layer expert load over each log interval (summed over ranks by the routers)."""

    def collect_metrics(self, trainer, metrics: dict) -> None:
        loads = trainer.take_expert_load()  # (layers, experts) lists, or None for dense models
        if not loads:
            return
        row = {"step": trainer.state.step, "layers": []}
        for i, load_E in enumerate(loads):
            stats = load_stats(load_E)
            metrics[f"moe/layer{i}/max_over_mean"] = stats["max_over_mean"]
            metrics[f"moe/layer{i}/cv"] = stats["cv"]
            row["layers"].append({**stats, "load": load_E})
        trainer.state.expert_load.append(row)


class MetricsFile(Callback):
    """Appends every log and eval row to ``metrics.jsonl`` (rank 0); a resume drops rows
    past the resumed step first, so the file matches the run's history."""

    def __init__(self, path: Path, resume_step: int = 0):
        # Done at construction, before any callback's on_train_start can log (validation).
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.is_file() and resume_step > 0:
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if row.get("step", 0) <= resume_step:
                    kept.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def _append(self, kind: str, step: int, metrics: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **metrics}) + "\n")

    def on_log(self, step: int, metrics: dict) -> None:
        self._append("train", step, metrics)

    def on_eval(self, step: int, metrics: dict) -> None:
        self._append("val", step, metrics)


class ProgressBar(Callback):
    """A tqdm bar on a terminal; plain log lines otherwise (Metaflow logs, CI)."""

    def __init__(self, stage: str, total_steps: int, tty: Optional[bool] = None):
        self.stage, self.total = stage, total_steps
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None

    def on_train_start(self, trainer) -> None:
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=trainer.state.step,
                desc=self.stage,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def on_step_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, step: int, metrics: dict) -> None:
        shown = {
            "loss": metrics.get("train_loss"),
            "lr": metrics.get("lr"),
            "tok/s": metrics.get("tok_per_s"),
        }
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
        else:
            parts = " ".join(f"{k} {v:.4g}" for k, v in shown.items() if v is not None)
            print(f"[{self.stage}] step {step}/{self.total} {parts}", file=sys.stderr, flush=True)

    def on_eval(self, step: int, metrics: dict) -> None:
        line = f"[{self.stage}] step {step}/{self.total} val_loss {metrics['val_loss']:.4f}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpointer(Callback):
    """Every ``every`` steps and at the end: check the loss is finite, save, prune.

    ``save(trainer) -> Path`` writes one checkpoint (the stage layer knows its metadata).
    Only rank 0 writes; every rank runs the finite check (a collective).
    """

    def __init__(self, every: int, total_steps: int, save: Callable[[Any], Optional[Path]]):
        self.every, self.total_steps, self.save = every, total_steps, save
        self.last: Optional[Path] = None

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if step % self.every == 0 or step == self.total_steps:
            trainer.sync_losses()  # raises on a non-finite loss: never save diverged weights
            t0 = time.perf_counter()
            path = self.save(trainer)
            trainer.excluded_s += time.perf_counter() - t0
            if path is not None:
                self.last = path
                trainer.emit("on_checkpoint", step, path)

"""Learning-rate schedules: warmup, then cosine / warmup-stable-decay / linear / constant.

    lr = lr_at(step, cfg)   # the LR of the update that takes the model from step to step+1

Warmup is linear from lr/warmup_steps to the peak over ``warmup_steps`` updates. After it,
``progress`` runs from 0 (first post-warmup update) towards 1 (the end of the stage), and
the schedule ends at ``lr * min_lr_ratio``:

* cosine: half a cosine from the peak to the final LR;
* wsd (warmup-stable-decay): the peak until the last ``decay_fraction`` of the updates,
  then a linear decay to the final LR (OLMo-core / MiniCPM style);
* linear: a straight line from the peak to the final LR (mid-training anneals to 0);
* constant: the peak throughout (``min_lr_ratio`` unused).

A pure function of the step, so a resumed run uses exactly the LRs of an uninterrupted one.
"""

from __future__ import annotations

import math

from ..config.train import TrainStageConfig


def lr_at(step: int, cfg: TrainStageConfig) -> float:
    peak, final = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        # The decay spans the last decay_fraction of all updates (at least one).
        decay_steps = max(1, round(cfg.decay_fraction * cfg.steps))
        start = max(cfg.warmup_steps, cfg.steps - decay_steps)
        if step < start:
            return peak
        progress = (step - start) / max(1, cfg.steps - start)
        return peak + (final - peak) * progress
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return peak + (final - peak) * progress
    # cosine
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))

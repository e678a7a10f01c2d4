"""The scaling sweep's ladder: which models it trains, on how many tokens, how.

``plan(params, train_tokens)`` turns ``scaling.sweep`` into :class:`SweepPoint` s, each a
complete model section and pretraining section: every size of ``active_params`` crossed
with every architecture of ``architectures`` (a dense architecture, sparsity 1, is one
column). The rules that derive a point's training from its size (docs/scaling.md#the-rules):

* tokens  = ``tokens_per_param`` x the ladder size (its target of active non-embedding
  parameters, so every architecture of one size sees the same tokens and batch), at least
  ``min_steps`` steps of the smallest batch, at most ``max_epochs`` of the training data;
* batch   = the largest power of two <= ``max_batch_size`` that still gives ``min_steps``;
* lr      = ``lr`` x ``lr_reference_width`` / d_model (Adam's step size scales as 1/width),
  warm-up ``warmup_fraction`` of the steps, then the pretraining section's schedule;
* validation on every window of the held-out split up to ``VAL_WINDOWS`` at the end.

A point's name says what it is (``n120k-s4-g4-f0.5``); its key (``point_key``) is what it
trains, so adding sizes or architectures to the ladder keeps every other point's key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, Params, parse_params, to_dict
from ..config.scaling import SweepConfig

VAL_WINDOWS = 96  # our choice: ~12k held-out tokens per point (the loss noise the fit sees, < 0.01 nats)
KEY = "scaling.sweep"


@dataclass(frozen=True)
class SweepPoint:
    name: str
    target_active_params: int
    sparsity: float
    granularity: int
    shared_fraction: float
    model: dict  # the complete model section
    train: dict  # the complete pretraining section
    tokens: int  # training tokens (steps x batch x seq_len)
    coordinates: dict  # mobilemoe.scaling.shapes.coordinates of the model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SweepPoint:
        return cls(**d)


def _label(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _name(target: int, sparsity: float, granularity: int, shared: float) -> str:
    if sparsity <= 1:
        return f"n{_label(target)}-dense"
    return f"n{_label(target)}-s{sparsity:g}-g{granularity}-f{shared:g}"


def _power_of_two_at_most(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def training_section(params: Params, sweep: SweepConfig, d_model: int, size: int, train_tokens: int) -> dict:
    """The pretraining section of one point of ladder size ``size`` (the rules of the
    module doc: every architecture of one size trains on the same tokens and batch)."""
    seq = sweep.seq_len
    if seq > params.model.max_seq_len:
        raise ConfigError(
            f"{KEY}.seq_len: {seq} is longer than model.max_seq_len={params.model.max_seq_len}; lower it"
        )
    cap = int(sweep.max_epochs * train_tokens)
    budget = min(max(int(sweep.tokens_per_param * size), 1), cap)
    batch = min(sweep.max_batch_size, _power_of_two_at_most(budget / (seq * sweep.min_steps)))
    steps = max(sweep.min_steps, budget // (batch * seq))
    if steps * batch * seq > cap:
        raise ConfigError(
            f"{KEY}.max_epochs: {sweep.max_epochs} epochs of the pretraining data ({train_tokens:,} "
            f"tokens) is fewer than min_steps={sweep.min_steps} steps of one {seq}-token sequence; "
            "raise max_epochs or lower min_steps"
        )
    section = to_dict(params.pretrain)
    section.update(
        steps=steps,
        batch_size=batch,
        seq_len=seq,
        grad_accum=1,
        nproc=1,
        lr=sweep.lr * (sweep.lr_reference_width / d_model) ** sweep.lr_width_exponent,
        warmup_steps=min(steps - 1, max(1, int(sweep.warmup_fraction * steps))),
        eval_every=steps,  # validate at the start and the end only
        eval_batches=max(1, math.ceil(VAL_WINDOWS / batch)),
        checkpoint_every=steps,  # a point is short: one checkpoint, at the end
        keep_checkpoints=2,
        log_every=max(1, steps // 10),
    )
    return section


def plan(params: Params, train_tokens: int) -> list[SweepPoint]:
    """Every point of ``scaling.sweep`` (empty when there is none); ``train_tokens`` is the
    size of the pretraining split (the ``max_epochs`` cap)."""
    from .shapes import coordinates, make_model

    sweep = params.scaling.sweep
    if sweep is None:
        return []
    points: list[SweepPoint] = []
    names: set[str] = set()
    for i, arch in enumerate(sweep.architectures):
        dense = arch.sparsity <= 1
        for j, target in enumerate(sweep.active_params):
            try:
                model = make_model(
                    params.model,
                    active_params=target,
                    sparsity=1.0 if dense else arch.sparsity,
                    granularity=1 if dense else arch.granularity,
                    shared_fraction=0.0 if dense else arch.shared_fraction,
                    n_layers=sweep.n_layers,
                    key=f"{KEY}.architectures[{i}]",
                )
            except ConfigError as e:
                size_key = f"{KEY}.active_params[{j}]"
                msg = str(e).replace(f"{KEY}.architectures[{i}].active_params", size_key)
                raise ConfigError(msg if size_key in msg else f"{msg} (at {size_key} = {target:,})") from None
            name = _name(target, arch.sparsity, arch.granularity, arch.shared_fraction)
            if name in names:
                raise ConfigError(
                    f"{KEY}: two points are both {name}; remove the repeated size or architecture"
                )
            names.add(name)
            coords = coordinates(model)
            model = dataclasses.replace(model, name=f"sweep-{name}", source="params")
            train = training_section(params, sweep, model.d_model, target, train_tokens)
            points.append(
                SweepPoint(
                    name=name,
                    target_active_params=target,
                    sparsity=1.0 if dense else arch.sparsity,
                    granularity=1 if dense else arch.granularity,
                    shared_fraction=0.0 if dense else arch.shared_fraction,
                    model=to_dict(model),
                    train=train,
                    tokens=train["steps"] * train["batch_size"] * train["seq_len"],
                    coordinates=coords,
                )
            )
    return points


def point_params(params: Params, point: SweepPoint) -> Params:
    """The complete params a point trains with: the project's, with the point's model and
    pretraining sections (the trainer, its checks and its fingerprint see a normal run)."""
    raw: dict[str, Any] = to_dict(params)
    raw["model"] = point.model
    raw["pretrain"] = point.train
    raw["runtime"] = {
        **raw["runtime"],
        "threads": params.scaling.sweep.threads if params.scaling.sweep else 1,
    }
    return parse_params(raw, f"{KEY} point {point.name}")


def groups(points: list[SweepPoint], per_task: int) -> list[list[SweepPoint]]:
    """The foreach tasks: points in ladder order, ``per_task`` at a time, the costly ones
    spread over the tasks (so parallel tasks finish together)."""
    if not points:
        return []
    n = max(1, math.ceil(len(points) / per_task))
    ordered = sorted(points, key=lambda p: -p.tokens * max(1, p.model["d_model"]))
    out: list[list[SweepPoint]] = [[] for _ in range(n)]
    for i, p in enumerate(ordered):  # snake order: 0..n-1, n-1..0, ...
        lap, pos = divmod(i, n)
        out[pos if lap % 2 == 0 else n - 1 - pos].append(p)
    return [g for g in out if g]

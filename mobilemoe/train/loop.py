"""The one training loop all four stages share.

    trainer = Trainer(model, cfg, loader, val_split, device=..., world=..., callbacks=[...])
    state = trainer.fit()          # TrainState: step, tokens, loss curves, expert load

What differs between stages is only what is handed in: the model (fresh, from a
checkpoint, or fake-quantized for QAT), the data (SFT windows carry a loss mask) and the
schedule (``cfg``). One optimizer step:

1. the LR from the schedule (a pure function of the step);
2. ``grad_accum`` micro-batches of this rank's slice of the global batch; each micro-batch
   loss is the masked cross-entropy *sum* divided by the global batch's loss-token count
   (times the world size, since DDP averages gradients), so 1 process and N processes
   take the same step; the routers' auxiliary losses (OLMoE) are added when present;
3. gradient clipping to ``grad_clip`` (global norm), AdamW, then the routers' balancing
   update (``update_router_biases``: loads summed over ranks).

``parallelism="fsdp"`` (with more than one process) shards the model with FSDP2 before
the optimizer is built (``mobilemoe.train.fsdp``): gradients are reduce-scattered (and
averaged, as DDP's all-reduce) after every micro-batch, and bf16 autocast becomes FSDP's
bf16 parameter policy. ``activation_checkpointing`` recomputes each block in backward.

Host syncs happen only at log, validation and checkpoint steps: losses, the non-finite
flag and expert loads stay on the device in between. A non-finite loss raises
:class:`NonFiniteLoss` naming the first bad step, at the latest before the next
checkpoint, so a checkpoint never holds diverged weights.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..config.train import TrainStageConfig
from ..data.shards import ShardSplit
from ..errors import UserError
from .callbacks import finish_callbacks
from .distributed import World, all_reduce_, wrap_ddp
from .fsdp import checkpoint_blocks, full_norm, load_full_optimizer_state, shard_model, will_shard
from .loader import WindowLoader, eval_batches, fixed_windows
from .optim import build_optimizer
from .schedule import lr_at

_NO_BAD_STEP = 2**62


class NonFiniteLoss(UserError):
    def __init__(self, step: int, message: Optional[str] = None):
        self.step = step
        super().__init__(message or f"the training loss is not finite (nan/inf) at step {step}")


@dataclass
class TrainState:
    """Everything about progress that a checkpoint must carry (JSON)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed, all ranks
    train_loss: list = field(default_factory=list)  # [step, mean CE of that step's batch]
    val_loss: list = field(default_factory=list)  # [step, val CE]
    logs: list = field(default_factory=list)  # metrics rows of the log steps
    expert_load: list = field(default_factory=list)  # per log step: per-layer load stats
    train_s: float = 0.0  # wall time of this stage so far, across resumes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def masked_ce_sum(logits: torch.Tensor, targets: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Sum of token cross-entropies (fp32), over targets where ``mask`` is 1 (all if None)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if mask is None:
        return F.cross_entropy(flat, targets.reshape(-1), reduction="sum")
    ce = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum()


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainStageConfig,
        loader: WindowLoader,
        val_split: ShardSplit,
        *,
        device: torch.device,
        world: Optional[World] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        callbacks: Sequence = (),
        state: Optional[TrainState] = None,
        optimizer_state: Optional[dict] = None,
        shard: Optional[bool] = None,
    ):
        self.model, self.cfg, self.loader = model, cfg, loader
        self.device, self.world, self.autocast_dtype = device, world or World(), autocast_dtype
        self.callbacks = list(callbacks)
        self.state = state or TrainState()
        if cfg.activation_checkpointing:
            checkpoint_blocks(model)
        # Unsharded "fsdp" (one process) trains the plain model and writes sharded-format
        # checkpoints that any process count resumes.
        self.sharded = will_shard(cfg.parallelism, self.world, shard)
        if self.sharded:
            # FSDP casts the gathered weights itself (fp32 master weights stay sharded).
            shard_model(model, param_dtype=autocast_dtype, device=device)
            self.autocast_dtype = None
            self.ddp_model = model
        else:
            if any(p.is_meta for p in model.parameters()):  # built for sharding, not sharded
                cast(Any, model).materialize(device)
            self.ddp_model = wrap_ddp(model, self.world, device)
        self.optimizer = build_optimizer(model, cfg)
        if optimizer_state is not None:
            if self.sharded:
                load_full_optimizer_state(model, self.optimizer, optimizer_state)
            else:
                self.optimizer.load_state_dict(optimizer_state)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.routers = cast(Any, model).routers() if hasattr(model, "routers") else []
        self.val_split = val_split
        self.val_offsets = fixed_windows(val_split, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
        self.excluded_s = 0.0  # time in validation/checkpoints (kept out of tokens/s)
        # Device-side accumulators, read at log steps only.
        # (step, ce sum, aux sum, loss-token count) of steps not yet synced
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []
        self._load_LE: Optional[torch.Tensor] = None
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._grad_norm: Optional[torch.Tensor] = None
        self._has_aux = False
        self._last_aux = 0.0
        self._last_log_step = self.state.step

    # -- callbacks ------------------------------------------------------------------------
    def emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(*args)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> None:
        cfg, step = self.cfg, self.state.step
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro, count = self.loader.micro_batches(step)
        scale = self.world.size / count  # DDP (and FSDP) average gradients over ranks
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            # DDP all-reduces gradients once per step, on the last micro-batch; FSDP
            # reduce-scatters every micro-batch (it keeps no unsharded gradients).
            sync = (
                cast(Any, self.ddp_model).no_sync()
                if self.world.distributed and not last and not self.sharded
                else contextlib.nullcontext()
            )
            with sync:
                with self._autocast():
                    logits = self.ddp_model(mb.inputs)
                ce = masked_ce_sum(logits, mb.targets, mb.mask)
                loss = ce * scale
                aux = cast(Any, self.model).aux_loss() if hasattr(self.model, "aux_loss") else None
                if aux is not None:
                    aux = aux / len(micro)
                    loss = loss + aux
                    aux_sum += aux.detach()
                    self._has_aux = True
                loss.backward()
            ce_sum += ce.detach()
        if cfg.grad_clip > 0:
            self._grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.routers:
            load = torch.stack(cast(Any, self.model).update_router_biases())
            self._load_LE = load if self._load_LE is None else self._load_LE + load
        # First non-finite step, tracked on the device (no sync): any rank's NaN poisons the
        # all-reduced gradients, and check_finite() all-reduces this flag.
        self._first_bad.masked_fill_((self._first_bad < 0) & ~torch.isfinite(ce_sum), step + 1)
        self.state.step += 1
        self.state.tokens += cfg.batch_size * cfg.seq_len
        self._pending.append((self.state.step, ce_sum, aux_sum, count))

    # -- syncs ----------------------------------------------------------------------------
    def check_finite(self) -> None:
        v = self._first_bad.masked_fill(self._first_bad < 0, _NO_BAD_STEP)
        if self.world.distributed:
            import torch.distributed as dist

            dist.all_reduce(v, op=dist.ReduceOp.MIN)
        bad = int(v.item())
        if bad != _NO_BAD_STEP:
            raise NonFiniteLoss(bad)

    def take_expert_load(self) -> Optional[list[list[float]]]:
        if self._load_LE is None:
            return None
        out = self._load_LE.tolist()
        self._load_LE = None
        return out

    def sync_losses(self) -> None:
        """Move the per-step losses from the device into ``state.train_loss`` (one sync)."""
        if self._pending:
            stacked = torch.stack([torch.stack([p[1], p[2]]) for p in self._pending])  # (n, 2)
            all_reduce_(stacked, self.world)
            sums = stacked.tolist()
            self.state.train_loss += [[p[0], s[0] / p[3]] for s, p in zip(sums, self._pending)]
            self._last_aux = sums[-1][1] / self.world.size
            self._pending = []
        self.check_finite()

    def log(self) -> None:
        self.sync_losses()
        step = self.state.step
        recent = [l for s, l in self.state.train_loss if s > self._last_log_step]
        if not recent:
            return
        self._last_log_step = step
        metrics: dict[str, Any] = {
            "train_loss": recent[-1],
            "train_loss_avg": float(np.mean(recent)),
            "lr": lr_at(step - 1, self.cfg),
            "tokens": self.state.tokens,
        }
        if self._grad_norm is not None:
            metrics["grad_norm"] = float(self._grad_norm)
        if self._has_aux:
            metrics["aux_loss"] = self._last_aux
        self.emit("collect_metrics", self, metrics)
        self.state.logs.append({"step": step, **metrics})
        self.emit("on_log", step, metrics)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean CE over the fixed validation windows (each rank a share, summed)."""
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(2, device=self.device, dtype=torch.float64)
        batch = max(1, self.cfg.batch_size // self.world.size)
        ran = 0
        try:
            for mb in eval_batches(
                self.val_split,
                self.val_offsets,
                self.cfg.seq_len,
                batch,
                self.world.rank,
                self.world.size,
                self.device,
            ):
                with self._autocast():
                    logits = self.model(mb.inputs)
                sums[0] += masked_ce_sum(logits, mb.targets, mb.mask).double()
                sums[1] += mb.targets.numel() if mb.mask is None else mb.mask.sum().double()
                ran += 1
            if self.sharded:
                # A sharded forward is a collective: a rank with fewer windows (they are
                # dealt round-robin) runs idle forwards until all ranks ran as many.
                most = -(-len(self.val_offsets[0 :: self.world.size]) // batch)
                idle = torch.zeros(1, self.cfg.seq_len, dtype=torch.long, device=self.device)
                for _ in range(most - ran):
                    self.model(idle)
        finally:
            self.model.train(was_training)
        all_reduce_(sums, self.world)
        return float(sums[0] / sums[1].clamp(min=1))

    def run_validation(self) -> float:
        t0 = time.perf_counter()
        val = self.validate()
        self.excluded_s += time.perf_counter() - t0
        self.state.val_loss.append([self.state.step, val])
        self.emit("on_eval", self.state.step, {"val_loss": val})
        return val

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to ``cfg.steps``; the callbacks get ``on_error`` on a failure and ``close``
        in every case (see :mod:`mobilemoe.train.callbacks`)."""
        try:
            self._fit()
        except BaseException as exc:
            finish_callbacks(self.callbacks, exc)
            raise
        finish_callbacks(self.callbacks)
        return self.state

    def _fit(self) -> None:
        cfg = self.cfg
        self.model.train()
        t_start = time.perf_counter()
        s_before = self.state.train_s
        self.emit("on_train_start", self)
        while self.state.step < cfg.steps:
            self.train_step()
            step = self.state.step
            if step % cfg.log_every == 0 or step == cfg.steps:
                self.log()
            self.state.train_s = s_before + time.perf_counter() - t_start
            self.emit("on_step_end", self)
        self.log()
        self.check_finite()
        self.state.train_s = s_before + time.perf_counter() - t_start
        self.emit("on_train_end", self)

"""Fully sharded data parallelism (FSDP2) and activation checkpointing for the trainer.

    checkpoint_blocks(model)                 # recompute each block's activations in backward
    shard_model(model, param_dtype=bf16)     # fully_shard per block, routers apart, then the root
    shard_model(build_model(cfg, "meta"), device=dev)  # made one block at a time, never whole
    full = full_model_state(model)           # rank 0: the whole state dict on the CPU

``<stage>.parallelism: fsdp`` with ``nproc > 1`` shards parameters, gradients and AdamW
state over the ranks with PyTorch's ``fully_shard`` (FSDP2: per-parameter DTensor
sharding on dim 0). Each ``Block`` is one unit (all-gathered before its forward and
backward, resharded after), the root holds the embedding, final norm and LM head.

Mixed precision (``runtime.precision`` resolving to bf16, as on CUDA): the sharded
parameters, gradients and optimizer state stay fp32 (the master weights); each unit is
all-gathered in bf16 and computes in bf16, gradients are reduce-scattered in fp32. The
routers are units of their own with an fp32 policy, so routing decisions see fp32 weights
exactly as under DDP's autocast (docs/paper.md#routing: router fp32). No autocast runs on
top of FSDP's casting. On the CPU (fp32) the policy is fp32 throughout.

Gradients are reduce-scattered after every micro-batch (no ``no_sync`` as under DDP): the
unsharded gradient of a unit lives only while it is reduced, which is what makes the
memory per GPU ``16 bytes x params / N`` (``mobilemoe.plan``).

The expert-bias balancing is unchanged: ``expert_bias`` and ``load_accum`` are buffers,
which FSDP neither shards nor casts; every rank all-reduces the same loads and applies the
same update, so the biases stay identical on all ranks (as with DDP).

Activation checkpointing wraps each block's forward in non-reentrant
``torch.utils.checkpoint``. The recomputation in backward would route the tokens a second
time and count their load twice; the routers' load counters (and last load, auxiliary
loss) are put back after each recomputation, so balancing and the logged loads are those
of one forward.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Optional, cast

import torch
from torch import nn


def _routers(module: nn.Module) -> list[nn.Module]:
    from ..model.moe import Router

    return [m for m in module.modules() if isinstance(m, Router)]


@contextlib.contextmanager
def _keep_router_stats(routers: list):
    saved = [(r.load_accum.clone(), r.last_load, r.aux_loss) for r in routers]
    try:
        yield
    finally:
        with torch.no_grad():
            for r, (accum, last, aux) in zip(routers, saved):
                r.load_accum.copy_(accum)
                r.last_load, r.aux_loss = last, aux


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute every block's activations during backward (saves its input only).

    The block's forward is replaced on the instance, so the module tree, the state-dict
    names and FSDP's hooks (around ``__call__``) are unchanged."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks():  # type: ignore[operator]
        if getattr(block, "_mobilemoe_checkpointed", False):
            continue
        routers = _routers(block)

        def contexts(routers=routers):
            return contextlib.nullcontext(), _keep_router_stats(routers)

        def forward(*args, _inner=block.forward, _contexts=contexts, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, context_fn=_contexts, **kwargs)

        block.forward = functools.wraps(block.forward)(forward)
        block._mobilemoe_checkpointed = True


def will_shard(parallelism: str, world: Any, shard: Optional[bool] = None) -> bool:
    """Whether a stage's model is sharded: ``fsdp`` over more than one process (one
    process has nothing to shard), unless ``shard`` says otherwise (True: a process group
    of one, as benchmarks/fsdp_step.py on one GPU)."""
    if shard is not None:
        return shard
    return parallelism == "fsdp" and world.distributed


def shard_model(
    model: nn.Module, param_dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None
) -> nn.Module:
    """``fully_shard`` the model in place (the process group must be up); returns it.

    ``param_dtype``: the compute dtype of the all-gathered parameters (None = fp32).
    A model built on "meta" (``build_model(cfg, "meta")``) is materialized on ``device``
    one unit at a time, each sharded before the next is made: a rank never holds more
    than one whole block, and the weights are those one process would have made
    (``MobileMoE.reset_parameters``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta and device is None:
        raise ValueError("shard_model: a model on 'meta' needs the device to materialize it on")

    compute = param_dtype or torch.float32
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    # Blocks take the residual stream in the compute dtype already (the root's embedding
    # makes it); cos/sin stay fp32 (casting them would round RoPE angles to bf16).
    block_mp = MixedPrecisionPolicy(
        param_dtype=compute, reduce_dtype=torch.float32, cast_forward_inputs=False
    )
    for i, block in enumerate(model.blocks()):  # type: ignore[operator]
        if on_meta:
            model.materialize(device, prefix=f"layers.{i}.")  # type: ignore[operator]
        for router in _routers(block):
            fully_shard(router, mp_policy=fp32)
        fully_shard(block, mp_policy=block_mp)
    if on_meta:
        model.materialize(device)  # type: ignore[operator]  # the root: embedding, norm, head
    fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32))
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_norm(norm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``clip_grad_norm_`` returns a DTensor for sharded gradients: the plain total."""
    if norm is not None and hasattr(norm, "full_tensor"):
        return norm.full_tensor()  # type: ignore[union-attr]
    return norm


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict (persistent buffers included) on the CPU, on rank 0 (a
    collective: every rank calls it; the others get an empty dict). Tied weights are the
    same tensor under each of their names, as in an unsharded model's state dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return model.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))
    if state:
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            key = id(p)
            if key in first and name in state:
                state[name] = state[first[key]]
            first.setdefault(key, name)
    return state


class FullWeights:
    """What ``mobilemoe.checkpoint.save_checkpoint`` needs of a model (``cfg`` and
    ``state_dict()``), for a state gathered from the shards."""

    def __init__(self, cfg: Any, state: dict[str, torch.Tensor]):
        self.cfg, self._state = cfg, state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def optimizer_state_by_name(state: dict) -> dict:
    """A ``torch.optim`` state dict (keyed by parameter index) keyed by parameter name
    instead, the form ``set_optimizer_state_dict`` takes; the names are the ones
    ``mobilemoe.train.optim.param_groups`` stores in each group."""
    index_to_name: dict[int, str] = {}
    for group in state["param_groups"]:
        index_to_name.update(zip(group["params"], group["names"]))
    return {
        "state": {index_to_name[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": list(g["names"])} for g in state["param_groups"]],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an unsharded optimizer state (a DDP or one-process checkpoint's) into the
    sharded optimizer: every rank keeps its shard of each tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model,
        optimizer,
        optimizer_state_by_name(state),
        options=StateDictOptions(full_state_dict=True),
    )

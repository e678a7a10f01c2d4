"""Data parallelism: the process group under torchrun, and launching torchrun.

    world = init_distributed(device)       # World(rank, size, local_rank); size 1 = no DDP
    cmd = torchrun_command(nproc, ["--stage", "pretrain", ...])

``run_stage`` runs in-process when a stage's ``nproc`` is 1; otherwise it launches
``python -m torch.distributed.run --standalone --nproc_per_node=N -m
mobilemoe.train.launch ...`` (metaflow-torchrun does not work locally, docs/libraries.md#metaflow) and
each rank runs the same ``train()`` with DDP: gloo on CPU, nccl on GPU.

Why plain DDP with ``find_unused_parameters=False`` is safe for the MoE layer: the
routed experts are two stacked parameters (``w13``, ``w2``) used through one ``unbind``,
so even when an expert gets no tokens on a rank its slice still receives a (zero)
gradient, and every parameter takes part in every backward. ``broadcast_buffers=False``:
the routers' buffers must not be overwritten by rank 0's each forward (``load_accum``
holds *this* rank's counts until ``update_bias`` all-reduces them; ``expert_bias`` stays
identical on all ranks because every rank applies the same all-reduced update).
The gradient all-reduce runs once per optimizer step (``no_sync`` on the other
micro-batches).

``<stage>.parallelism: fsdp`` shards instead of replicating (``mobilemoe.train.fsdp``); the
process group, batch split and rank-0 duties are the same.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> World:
    """Join the process group torchrun set up (no-op in a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(
        rank=int(os.environ["RANK"]),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend=backend)
    return world


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(t: torch.Tensor, world: World, op=None) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank (a pickled broadcast; small objects only)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # forward_sync_buffers=False (torch 2.13's name for broadcast_buffers=False): buffers are
    # synced once at construction (identical then) and never again (see the module doc).
    return DDP(model, device_ids=ids, forward_sync_buffers=False, find_unused_parameters=False)


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mobilemoe.train.launch",
        *args,
    ]

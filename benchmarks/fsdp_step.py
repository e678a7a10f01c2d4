"""One training step under FSDP and under DDP, side by side: time, tokens/s, MFU and peak
memory per rank, against ``mobilemoe plan``'s prediction for the same configuration.

Each parallelism runs in its own group of ``--nproc`` processes (spawned here; gloo on
the CPU, NCCL on GPUs), so one's memory does not count in the other's peak. Every rank
builds the model as the trainer does: under FSDP from "meta", one block at a time as it
is sharded (``mobilemoe.train.fsdp.shard_model``), under DDP whole. The step is the
trainer's own (``Trainer.train_step``: loader, forward, masked CE, backward, clipping,
AdamW, router balancing).

* CPU (default): 2 ranks, MobileMoE-S's layer shapes with 2 layers and a 4,096 vocab (as
  ``benchmarks/train_step.py``; our choice, so that two ranks fit this machine), fp32.
* CUDA: the full ``mobilemoe-s`` preset (20 layers, vocab 128,256, seq 2,048) in bf16 on
  every visible GPU (``--nproc`` to choose). With one GPU, FSDP runs on a process group of
  one: nothing is sharded, but FSDP's bf16 gathering and fp32 master weights are what is
  timed.

    .venv/bin/python benchmarks/fsdp_step.py [--nproc 2] [--steps 2] [--repeats 3]
    python benchmarks/fsdp_step.py --device cuda --model mobilemoe-s [--checkpointing]

Prints a table and one JSON line; writes benchmarks/results/fsdp_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp import write_result  # noqa: E402
from train_step import stage_config, token_split  # noqa: E402

from mobilemoe.model import build_model  # noqa: E402
from mobilemoe.model.accounting import account  # noqa: E402
from mobilemoe.plan import _shapes, memory  # noqa: E402
from mobilemoe.train.distributed import World  # noqa: E402
from mobilemoe.train.loader import WindowLoader  # noqa: E402
from mobilemoe.train.loop import Trainer  # noqa: E402
from mobilemoe.train.speed import peak_flops  # noqa: E402

PARALLELISMS = ("fsdp", "ddp")


def model_config(name: str, device: str, layers: int | None, vocab: int | None):
    import yaml

    from mobilemoe.config import preset_path
    from mobilemoe.config.base import build
    from mobilemoe.config.model import ModelConfig

    cfg = build(ModelConfig, yaml.safe_load(preset_path(name).read_text())["model"], "model")
    if device == "cpu":  # two ranks of the full model do not fit a small machine
        layers, vocab = layers or 2, vocab or 4096
    changes = {}
    if layers:
        changes["n_layers"] = layers
    if vocab:
        changes["vocab_size"] = vocab
    if changes:
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{layers or cfg.n_layers}layers", **changes)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rank(rank: int, nproc: int, port: int, job: dict, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(job["threads"])
    cuda = job["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=nproc)
    try:
        world = World(rank=rank, size=nproc, local_rank=rank, local_size=nproc)
        cfg, batch, seq = job["model"], job["batch"], job["seq"]
        rss_before = _peak_bytes(device) if not cuda else 0
        torch.manual_seed(0)
        sharded = job["parallelism"] == "fsdp"
        model = build_model(cfg, device="meta" if sharded else "cpu")
        if not sharded:
            model.to(device)
        split = token_split(cfg.vocab_size, batch, seq)
        tcfg = stage_config(
            batch, seq, parallelism=job["parallelism"], activation_checkpointing=job["checkpointing"]
        )
        loader = WindowLoader(split, batch, seq, 0, rank, nproc, 1, device)
        trainer = Trainer(
            model,
            tcfg,
            loader,
            split,
            device=device,
            world=world,
            autocast_dtype=torch.bfloat16 if cuda else None,
            shard=sharded,  # a group of one (one GPU) shards too
        )
        trainer.train_step()  # warm-up: allocator, kernels, FSDP's buffers
        times = []
        for _ in range(job["repeats"]):
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(job["steps"]):
                trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / job["steps"])
        peak = torch.tensor([_peak_bytes(device)], dtype=torch.float64, device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        step_s = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
        dist.all_reduce(step_s, op=dist.ReduceOp.MAX)  # the step is as slow as the slowest rank
        if rank == 0:
            out.put({"step_s": step_s.item(), "peak_bytes": int(peak.item()), "rss_before": rss_before})
    finally:
        dist.destroy_process_group()


def run(job: dict, nproc: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(nproc, _free_port(), job, out), nprocs=nproc, start_method="spawn")
    return out.get()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="mobilemoe-s", help="a preset name (its model section)")
    ap.add_argument("--layers", type=int, default=None, help="override n_layers (CPU default: 2)")
    ap.add_argument("--vocab", type=int, default=None, help="override vocab_size (CPU default: 4096)")
    ap.add_argument("--nproc", type=int, default=None, help="ranks (default: GPUs visible, or 2 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: 2 per rank)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: 2048 GPU, 256 CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=3, help="timed blocks (median)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--parallelisms", default=",".join(PARALLELISMS))
    ap.add_argument("--out", default="benchmarks/results/fsdp_step.json")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible")
    nproc = args.nproc or (torch.cuda.device_count() if cuda else 2)
    seq = args.seq or (2048 if cuda else 256)
    batch = args.batch or 2 * nproc
    cfg = model_config(args.model, args.device, args.layers, args.vocab)
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, seq))
    device = torch.device("cuda" if cuda else "cpu")
    peak = peak_flops(device, args.threads)
    acc = account(cfg, seq)
    shapes = _shapes(cfg, seq)
    results: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model": cfg.name,
        "total_params": acc.total_params,
        "active_params": acc.active_params,
        "nproc": nproc,
        "batch": batch,
        "seq_len": seq,
        "precision": "bf16" if cuda else "fp32",
        "activation_checkpointing": args.checkpointing,
        "peak_flop_per_s_per_rank": peak.flop_per_s,
        "peak_source": peak.source,
        "parallelisms": {},
    }
    for par in args.parallelisms.split(","):
        job = dict(
            model=cfg,
            batch=batch,
            seq=seq,
            device=args.device,
            threads=args.threads,
            steps=args.steps,
            repeats=args.repeats,
            parallelism=par,
            checkpointing=args.checkpointing,
        )
        r = run(job, nproc)
        tok_s = batch * seq / r["step_s"]
        flop_s = tok_s * 3 * acc.flops_per_token
        planned = memory(shapes, par, nproc, batch // nproc, seq, cuda, args.checkpointing)
        results["parallelisms"][par] = {
            **r,
            "tok_per_s": tok_s,
            "tok_per_s_per_rank": tok_s / nproc,
            "mfu": flop_s / (peak.flop_per_s * nproc) if peak.flop_per_s else None,
            "planned_bytes": planned["total_bytes"],
            "planned_state_bytes": planned["state_bytes"],
        }
    gb = 1e9
    print(
        f"{results['model']} ({acc.total_params / 1e6:.0f}M total, {acc.active_params / 1e6:.0f}M active), "
        f"{nproc} rank(s), batch {batch} x seq {seq}, {results['precision']} on {results['device']}"
    )
    head = ["step s", "tok/s", "MFU", "peak GB/rank", "plan GB", "state GB"]
    print(f"{'':<6} " + " ".join(f"{h:>{w}}" for h, w in zip(head, (8, 9, 7, 13, 8, 9))))
    for par, r in results["parallelisms"].items():
        mfu = f"{r['mfu']:.3f}" if r["mfu"] else "-"
        print(
            f"{par:<6} {r['step_s']:>8.3f} {r['tok_per_s']:>9.0f} {mfu:>7} {r['peak_bytes'] / gb:>13.2f} "
            f"{r['planned_bytes'] / gb:>8.2f} {r['planned_state_bytes'] / gb:>9.2f}"
        )
    pars = results["parallelisms"]
    if "fsdp" in pars and "ddp" in pars:
        results["fsdp_vs_ddp_step_time"] = pars["fsdp"]["step_s"] / pars["ddp"]["step_s"]
        results["fsdp_vs_ddp_peak_bytes"] = pars["fsdp"]["peak_bytes"] / pars["ddp"]["peak_bytes"]
        print(
            f"FSDP / DDP: step time {results['fsdp_vs_ddp_step_time']:.2f}x, "
            f"peak memory {results['fsdp_vs_ddp_peak_bytes']:.2f}x"
        )
    if not cuda:
        print(
            "(CPU peak is the process's max RSS, with torch itself "
            f"~{pars[next(iter(pars))]['rss_before'] / gb:.2f} GB; the plan counts training memory only)"
        )
    print(f"(medians of {args.repeats} blocks of {args.steps} steps; MFU per rank against {peak.source})")
    write_result("fsdp_step", results, args.out)
    print(
        json.dumps(
            {
                p: {"step_s": round(r["step_s"], 4), "tok_per_s": round(r["tok_per_s"]), "mfu": r["mfu"]}
                for p, r in pars.items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

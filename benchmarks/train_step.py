"""Training-step throughput: the MoE vs a dense model with the same active parameters.

Times the trainer's real step (``mobilemoe.train.Trainer.train_step``: window loader,
forward, masked CE, backward, clipping, AdamW, router balancing update) side by side in
one process, interleaving MoE and dense blocks so machine drift hits both alike.

* CPU (fp32): the ``tiny`` preset's model at its pretrain batch, and two layers of
  MobileMoE-S's shapes (docs/paper.md#mobilemoe-s-architecture: d 768, 12/4 heads of 64,
  60 routed experts x 384 top-4, a shared expert of 1536; vocab 4,096 here, our choice: a 128k LM head would
  dominate a 2-layer model). Also MFU against a matmul ceiling measured now.
* CUDA (bf16 autocast): the full ``mobilemoe-s`` preset (20 layers, vocab 128,256) at
  seq 2,048, MFU against the GPU's datasheet bf16 peak (mobilemoe/train/speed.py).

    .venv/bin/python benchmarks/train_step.py [--threads 2] [--repeats 5] [--steps 3]
    .venv/bin/python benchmarks/train_step.py --device cuda --configs mobilemoe-s

Prints a table and one JSON line; writes benchmarks/results/train_step.json (with the
machine and date).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stamp import write_result  # noqa: E402

from mobilemoe.config.train import TrainStageConfig  # noqa: E402
from mobilemoe.data.shards import ShardSplit  # noqa: E402
from mobilemoe.model import build_model  # noqa: E402
from mobilemoe.model.accounting import account  # noqa: E402
from mobilemoe.train.dense import dense_counterpart  # noqa: E402
from mobilemoe.train.loader import WindowLoader  # noqa: E402
from mobilemoe.train.loop import Trainer  # noqa: E402
from mobilemoe.train.speed import peak_flops  # noqa: E402


def _preset_model(name: str):
    import yaml

    from mobilemoe.config import preset_path
    from mobilemoe.config.base import build
    from mobilemoe.config.model import ModelConfig

    # Only the model section: the benchmark must not depend on other sections' state.
    return build(ModelConfig, yaml.safe_load(preset_path(name).read_text())["model"], "model")


def configs(device: str) -> dict:
    tiny = _preset_model("tiny")
    s = _preset_model("mobilemoe-s")
    s_layer = dataclasses.replace(
        s, name="mobilemoe-s-2layers", n_layers=2, vocab_size=4096, max_seq_len=256, rope_scaling=None
    )
    out = {
        "tiny": dict(model=tiny, batch=16, seq=128),
        "mobilemoe-s-layer": dict(model=s_layer, batch=16, seq=256),
    }
    if device == "cuda":
        out["mobilemoe-s"] = dict(model=dataclasses.replace(s, max_seq_len=2048), batch=8, seq=2048)
    return out


def token_split(vocab_size: int, batch: int, seq: int) -> ShardSplit:
    """Random tokens (ids from 6: past the special tokens), enough for many steps."""
    tokens = np.random.default_rng(0).integers(6, vocab_size, size=max(200_000, 50 * batch * seq))
    return ShardSplit("train", tokens.astype(np.int64), None)


def stage_config(batch: int, seq: int, **overrides) -> TrainStageConfig:
    """A stage that never ends, at a constant LR: every timed step is alike."""
    return TrainStageConfig(
        steps=10**6,
        batch_size=batch,
        seq_len=seq,
        lr=1e-4,
        warmup_steps=0,
        schedule="constant",
        eval_batches=1,
        **overrides,
    )


def make_trainer(model_cfg, batch: int, seq: int, device: torch.device, bf16: bool) -> Trainer:
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    split = token_split(model_cfg.vocab_size, batch, seq)
    cfg = stage_config(batch, seq)
    loader = WindowLoader(split, batch, seq, seed=0, device=device)
    return Trainer(model, cfg, loader, split, device=device, autocast_dtype=torch.bfloat16 if bf16 else None)


def timed_block(trainer: Trainer, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def bench(name: str, c: dict, device: torch.device, steps: int, repeats: int, peak) -> dict:
    bf16 = device.type == "cuda"
    moe_cfg, dense_cfg = c["model"], dense_counterpart(c["model"])
    trainers = {
        "moe": make_trainer(moe_cfg, c["batch"], c["seq"], device, bf16),
        "dense_active": make_trainer(dense_cfg, c["batch"], c["seq"], device, bf16),
    }
    for t in trainers.values():  # warm-up (allocator, kernels)
        timed_block(t, 2, device)
    times = {k: [] for k in trainers}
    for _ in range(repeats):
        for k, t in trainers.items():
            times[k].append(timed_block(t, steps, device))
    tokens = c["batch"] * c["seq"]
    out = {"batch": c["batch"], "seq_len": c["seq"], "precision": "bf16" if bf16 else "fp32"}
    for k, cfg in (("moe", moe_cfg), ("dense_active", dense_cfg)):
        acc = account(cfg, c["seq"])
        step_s = statistics.median(times[k])
        flop_per_s = tokens / step_s * 3 * acc.flops_per_token
        out[k] = {
            "step_s": step_s,
            "tok_per_s": tokens / step_s,
            "flop_per_s": flop_per_s,
            "mfu": flop_per_s / peak.flop_per_s if peak.flop_per_s else None,
            "active_params": acc.active_params,
            "total_params": acc.total_params,
        }
    out["moe_tok_per_s_vs_dense"] = out["moe"]["tok_per_s"] / out["dense_active"]["tok_per_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved blocks per model")
    ap.add_argument("--configs", default=None, help="comma-separated (default: all for the device)")
    ap.add_argument("--out", default="benchmarks/results/train_step.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    all_cfgs = configs(device.type)
    names = args.configs.split(",") if args.configs else list(all_cfgs)
    peak = peak_flops(device, args.threads)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "peak_flop_per_s": peak.flop_per_s,
        "peak_source": peak.source,
        "configs": {},
    }
    for name in names:
        results["configs"][name] = bench(name, all_cfgs[name], device, args.steps, args.repeats, peak)

    print(
        f"{'config':<20} {'MoE tok/s':>10} {'dense tok/s':>12} {'MoE/dense':>10} {'MoE MFU':>8} "
        f"{'active':>8} {'total':>8}"
    )
    for name, r in results["configs"].items():
        mfu = r["moe"]["mfu"]
        print(
            f"{name:<20} {r['moe']['tok_per_s']:>10.0f} {r['dense_active']['tok_per_s']:>12.0f} "
            f"{r['moe_tok_per_s_vs_dense']:>10.2f} {(f'{mfu:.3f}' if mfu else '-'):>8} "
            f"{r['moe']['active_params'] / 1e6:>7.1f}M {r['moe']['total_params'] / 1e6:>7.1f}M"
        )
    print(
        f"(medians of {args.repeats} interleaved blocks of {args.steps} steps; {results['device']}, "
        f"{args.threads} thread(s); peak {peak.flop_per_s or 0:.3g} FLOP/s: {peak.source}; "
        "dense = same active parameters)"
    )
    write_result("train_step", results, args.out)
    print(
        json.dumps(
            {
                n: {
                    "moe_tok_per_s": round(r["moe"]["tok_per_s"]),
                    "moe_vs_dense": round(r["moe_tok_per_s_vs_dense"], 3),
                    "moe_mfu": r["moe"]["mfu"] and round(r["moe"]["mfu"], 4),
                }
                for n, r in results["configs"].items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A memory plan before spending money: bytes per GPU of each training stage, the settings
that fit, and what the stages cost in GPU-hours.

    from mobilemoe.plan import plan
    p = plan(params, gpus=8, gpu_mem_gb=80)         # a pure function of the params
    p["fits"], p["parallelism"], p["state_bytes_per_gpu"], p["stages"]["pretrain"]

``mobilemoe plan --preset mobilemoe-l --gpus 8 --gpu-mem-gb 80 [--json]`` prints it, and
the pipeline's ``start`` refuses a CUDA run whose configured settings do not fit
(``mobilemoe.preflight.check_memory_plan``).

The accounting (P = all parameters, N = GPUs, AdamW, fp32 master weights):

* state, ``16 P`` in all: fp32 parameters (4 P), fp32 gradients (4 P), AdamW's two fp32
  moments (8 P). DDP keeps all of it on every GPU; FSDP divides it by N.
* working copies (``working_bytes``), which exist only while training runs. DDP: its
  gradient buckets (4 P, with more than one GPU) and, under bf16 autocast, the cached bf16
  copies of the weights (2 P). FSDP: the root unit (embedding, final norm, LM head)
  gathered in bf16 from forward to backward with its gradient, and two blocks gathered at
  once (the running one and the prefetched one) plus one block's bf16 gradient and its
  fp32 reduce-scatter copy.
* activations of one micro-batch (``micro_batch x seq_len`` tokens): what autograd keeps per
  token in each block (counted from the model's own forward: norms in fp32, the rest in the
  compute dtype; attention through SDPA, which keeps no score matrix), plus the head: logits,
  their fp32 log-softmax and the logits' gradient (3 x vocab per token). With activation
  checkpointing a block keeps only its input (d_model per token) and one block at a time
  is recomputed, after the head's tensors are freed (so the larger of the two counts).
* usable memory: ``USABLE_FRACTION`` of the GPU's (CUDA context, allocator fragmentation
  and NCCL buffers take the rest).

Checked against measured peak memory on CPU (every tensor's storage counted by torch's
``MemTracker``; ``tests/test_plan.py``): within 20% for the tiny preset and a two-layer
model of MobileMoE-S shapes.

GPU-hours: a stage's training FLOPs (3 x forward FLOPs per token x tokens, the
``mobilemoe arch`` accounting at its ``seq_len``) over ``peak_tflops x mfu``; recomputation
under activation checkpointing is not model FLOPs, so it shows as a lower MFU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from .config import TRAIN_STAGES, Params
from .config.model import ModelConfig
from .errors import UserError

GB = 1e9  # decimal GB in and out (an "80 GB" H100 has 80 GiB = 85.9e9 bytes: the plan errs low)
USABLE_FRACTION = 0.9
DEFAULT_MFU = 0.4
DEFAULT_PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 (mobilemoe.train.speed)
FP32 = 4
ADAMW_STATES = 2
PARALLELISMS = ("ddp", "fsdp")


@dataclass
class Shapes:
    """What the plan needs of a model: parameter counts (the model's own numel sums) and
    the widths autograd keeps per token."""

    total_params: int
    root_params: int  # embedding, final norm, LM head (tied: once)
    max_block_params: int
    flops_per_token: int  # forward, at the stage's seq_len (computed per stage)
    cfg: ModelConfig


def _shapes(cfg: ModelConfig, seq_len: int) -> Shapes:
    from .model.accounting import account
    from .model.transformer import build_model

    model = build_model(cfg, device="meta")
    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.blocks()]
    return Shapes(total, total - sum(blocks), max(blocks), account(cfg, seq_len).flops_per_token, cfg)


def block_activation_bytes_per_token(cfg: ModelConfig, layer: int, act_bytes: int) -> int:
    """Bytes autograd keeps per token for one block's backward (the model's forward read
    top to bottom: ``mobilemoe/model/transformer.py``, ``moe.py``)."""
    d, a, f = cfg.d_model, act_bytes, FP32
    hd = cfg.resolved_head_dim
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    norm = 2 * d * f + d * a  # fp32 input and normalised copy, output in the compute dtype
    attn = norm + (q + 2 * kv) * a  # q, k, v projections
    if cfg.qk_norm:
        attn += (q + kv) * (2 * f + a)
    attn += (q + kv) * (f + a)  # RoPE: fp32 halves, rotated output
    attn += 2 * q * a + q * a + cfg.n_heads * f  # K/V repeated per query head, SDPA out, lse
    attn += q * a  # the output projection's input
    ffn = norm
    moe = cfg.moe
    if moe is not None and cfg.is_moe_layer(layer):
        k, h = moe.top_k, moe.expert_hidden
        ffn += 3 * moe.n_routed_experts * f + 2 * k * f  # router logits, scores, pick; gates
        ffn += k * (2 * d + 4 * h) * a  # routed copies in and out, gate/up, silu, product
        ffn += 4 * moe.n_shared_experts * moe.shared_hidden * a
    else:
        ffn += 4 * cfg.ffn_hidden * a
    return int(attn + ffn)


def head_activation_bytes_per_token(cfg: ModelConfig, act_bytes: int) -> int:
    """Final norm, logits, their fp32 log-softmax and the logits' gradient (the peak is
    at the start of backward)."""
    d, a, f, v = cfg.d_model, act_bytes, FP32, cfg.vocab_size
    return int(2 * d * f + d * a + v * a + 2 * v * f)


def activation_bytes(cfg: ModelConfig, tokens: int, act_bytes: int, checkpointing: bool) -> int:
    per_block = [block_activation_bytes_per_token(cfg, i, act_bytes) for i in range(cfg.n_layers)]
    head = head_activation_bytes_per_token(cfg, act_bytes)
    if checkpointing:
        # Block inputs stay; the head's tensors are freed before the first block is
        # recomputed, so the peak is the larger of the two.
        return int(tokens * (cfg.n_layers * cfg.d_model * act_bytes + max(head, max(per_block))))
    return int(tokens * (sum(per_block) + head))


def memory(
    shapes: Shapes,
    parallelism: str,
    gpus: int,
    micro_batch: int,
    seq_len: int,
    mixed: bool,
    checkpointing: bool,
) -> dict[str, int]:
    """Bytes per GPU of one configuration (see the module doc for each term)."""
    p = shapes.total_params
    shard = gpus if parallelism == "fsdp" else 1
    a = 2 if mixed else FP32
    params_b = math.ceil(FP32 * p / shard)
    grads_b = math.ceil(FP32 * p / shard)
    optim_b = math.ceil(ADAMW_STATES * FP32 * p / shard)
    if parallelism == "fsdp" and gpus > 1:
        working = shapes.root_params * (2 * a + FP32) + shapes.max_block_params * (3 * a + FP32)
    else:
        working = (FP32 * p if gpus > 1 else 0) + (2 * p if mixed else 0)
    act = activation_bytes(shapes.cfg, micro_batch * seq_len, a, checkpointing)
    state = params_b + grads_b + optim_b
    return {
        "params_bytes": params_b,
        "grads_bytes": grads_b,
        "optimizer_bytes": optim_b,
        "state_bytes": state,
        "working_bytes": int(working),
        "activations_bytes": act,
        "total_bytes": int(state + working + act),
    }


def _micro_batches(batch_size: int, gpus: int) -> list[int]:
    """Micro-batch sizes possible at this GPU count, largest first (grad_accum divides
    the per-GPU batch)."""
    if batch_size % gpus:
        return []
    per_gpu = batch_size // gpus
    return [per_gpu // g for g in range(1, per_gpu + 1) if per_gpu % g == 0]


def _choose(shapes, stage_cfg, gpus, budget, mixed) -> Optional[dict[str, Any]]:
    """The settings that fit: no activation checkpointing if possible (it costs a third
    more compute), then the largest micro-batch, DDP over FSDP on a tie (one all-reduce
    per step instead of a reduce-scatter per micro-batch)."""
    seq = stage_cfg.seq_len
    sizes = _micro_batches(stage_cfg.batch_size, gpus)
    for checkpointing in (False, True):
        best = None
        for parallelism in PARALLELISMS:
            for mb in sizes:
                m = memory(shapes, parallelism, gpus, mb, seq, mixed, checkpointing)
                if m["total_bytes"] <= budget:
                    if best is None or mb > best["micro_batch"]:
                        best = {
                            "parallelism": parallelism,
                            "micro_batch": mb,
                            "grad_accum": stage_cfg.batch_size // gpus // mb,
                            "activation_checkpointing": checkpointing,
                            **m,
                        }
                    break
        if best is not None:
            return best
    return None


def plan(
    params: Params,
    gpus: int,
    gpu_mem_gb: float,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float = DEFAULT_PEAK_TFLOPS,
    mixed_precision: Optional[bool] = None,
) -> dict[str, Any]:
    """The memory plan of every training stage on ``gpus`` GPUs of ``gpu_mem_gb`` GB.

    ``mixed_precision``: bf16 compute with fp32 master weights (default: what
    ``runtime.precision`` gives on a GPU, i.e. anything but ``fp32``)."""
    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    if not gpu_mem_gb > 0:
        raise UserError(f"--gpu-mem-gb must be > 0, got {gpu_mem_gb}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if not peak_tflops > 0:
        raise UserError(f"--peak-tflops must be > 0, got {peak_tflops}")
    mixed = params.runtime.precision != "fp32" if mixed_precision is None else mixed_precision
    budget = int(gpu_mem_gb * GB * USABLE_FRACTION)
    stages: dict[str, Any] = {}
    shapes_at: dict[int, Shapes] = {}
    for stage in TRAIN_STAGES:
        cfg = getattr(params, stage)
        if cfg.seq_len not in shapes_at:
            shapes_at[cfg.seq_len] = _shapes(params.model, cfg.seq_len)
        shapes = shapes_at[cfg.seq_len]
        tokens = cfg.steps * cfg.batch_size * cfg.seq_len
        train_flops = 3 * shapes.flops_per_token * tokens
        gpu_hours = train_flops / (peak_tflops * 1e12 * mfu) / 3600
        per_gpu_batch_ok = cfg.batch_size % gpus == 0
        configured_mb = cfg.batch_size // gpus // cfg.grad_accum if per_gpu_batch_ok else 0
        options: dict[str, Any] = {}
        for parallelism in PARALLELISMS:
            mb = max(1, configured_mb)
            options[parallelism] = {
                "micro_batch": mb,
                "without_checkpointing": memory(shapes, parallelism, gpus, mb, cfg.seq_len, mixed, False),
                "with_checkpointing": memory(shapes, parallelism, gpus, mb, cfg.seq_len, mixed, True),
            }
        configured = None
        if configured_mb >= 1 and (cfg.batch_size // gpus) % cfg.grad_accum == 0:
            m = memory(
                shapes,
                cfg.parallelism,
                gpus,
                configured_mb,
                cfg.seq_len,
                mixed,
                cfg.activation_checkpointing,
            )
            configured = {
                "parallelism": cfg.parallelism,
                "micro_batch": configured_mb,
                "grad_accum": cfg.grad_accum,
                "activation_checkpointing": cfg.activation_checkpointing,
                "fits": m["total_bytes"] <= budget,
                **m,
            }
        recommended = _choose(shapes, cfg, gpus, budget, mixed)
        stages[stage] = {
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "tokens": tokens,
            "train_flops": train_flops,
            "gpu_hours": gpu_hours,
            "wall_hours": gpu_hours / gpus,
            "options": options,
            "configured": configured,
            "recommended": recommended,
            "fits": recommended is not None,
        }

    # The most demanding stage: the largest state + activations at its best settings (or,
    # where nothing fits, at the smallest micro-batch with checkpointing under FSDP).
    def need(stage: str) -> int:
        s = stages[stage]
        if s["recommended"] is not None:
            return s["recommended"]["total_bytes"]
        cfg = getattr(params, stage)
        return memory(shapes_at[cfg.seq_len], "fsdp", gpus, 1, cfg.seq_len, mixed, True)["total_bytes"]

    worst = max(TRAIN_STAGES, key=need)
    w = stages[worst]
    rec = w["recommended"]
    chosen = rec or memory(
        shapes_at[getattr(params, worst).seq_len], "fsdp", gpus, 1, w["seq_len"], mixed, True
    )
    shapes = next(iter(shapes_at.values()))
    return {
        "model": params.model.name,
        "total_params": shapes.total_params,
        "gpus": gpus,
        "gpu_mem_gb": gpu_mem_gb,
        "usable_bytes_per_gpu": budget,
        "mixed_precision": mixed,
        "mfu": mfu,
        "peak_tflops": peak_tflops,
        "stages": stages,
        "most_demanding_stage": worst,
        "fits": all(s["fits"] for s in stages.values()),
        "parallelism": rec["parallelism"] if rec else "fsdp",
        "micro_batch": rec["micro_batch"] if rec else None,
        "grad_accum": rec["grad_accum"] if rec else None,
        "activation_checkpointing": rec["activation_checkpointing"] if rec else True,
        "state_bytes_per_gpu": chosen["state_bytes"],
        "params_bytes_per_gpu": chosen["params_bytes"],
        "grads_bytes_per_gpu": chosen["grads_bytes"],
        "optimizer_bytes_per_gpu": chosen["optimizer_bytes"],
        "working_bytes_per_gpu": chosen["working_bytes"],
        "activations_bytes_per_gpu": chosen["activations_bytes"],
        "total_bytes_per_gpu": chosen["total_bytes"],
        "gpu_hours": sum(s["gpu_hours"] for s in stages.values()),
    }


def _gb(n: float) -> str:
    return f"{n / GB:,.1f}"


def render(p: dict[str, Any]) -> str:
    """The plan as a table (what ``mobilemoe plan`` prints and a refused ``start`` shows)."""
    lines = [
        f"{p['model']}: {p['total_params'] / 1e9:.3f} B parameters on {p['gpus']} GPU(s) of "
        f"{p['gpu_mem_gb']:g} GB ({_gb(p['usable_bytes_per_gpu'])} GB usable each), "
        f"{'bf16 compute, fp32 master weights' if p['mixed_precision'] else 'fp32'}, AdamW",
        "",
        "GB per GPU at each stage's configured micro-batch "
        "(params + grads + AdamW = state; working copies; activations without / with checkpointing):",
    ]
    head = f"{'stage':<9} {'par':<5} {'mb x seq':>11} {'params':>8} {'grads':>8} {'adamw':>8} {'state':>8}"
    head += f" {'working':>8} {'act':>8} {'act ckpt':>9} {'total':>8} {'total ckpt':>10}"
    lines.append(head)
    for stage, s in p["stages"].items():
        for par, o in s["options"].items():
            m, c = o["without_checkpointing"], o["with_checkpointing"]
            lines.append(
                f"{stage:<9} {par:<5} {o['micro_batch']:>4} x {s['seq_len']:<5}"
                f"{_gb(m['params_bytes']):>8} {_gb(m['grads_bytes']):>8} {_gb(m['optimizer_bytes']):>8} "
                f"{_gb(m['state_bytes']):>8} {_gb(m['working_bytes']):>8} {_gb(m['activations_bytes']):>8} "
                f"{_gb(c['activations_bytes']):>9} {_gb(m['total_bytes']):>8} {_gb(c['total_bytes']):>10}"
            )
    lines += ["", "Configured and recommended settings per stage, and what the stage costs:"]
    for stage, s in p["stages"].items():
        c, r = s["configured"], s["recommended"]
        conf = (
            f"{c['parallelism']}, micro-batch {c['micro_batch']}, grad_accum {c['grad_accum']}, "
            f"checkpointing {'on' if c['activation_checkpointing'] else 'off'}: {_gb(c['total_bytes'])} GB "
            f"{'fits' if c['fits'] else 'DOES NOT FIT'}"
            if c
            else "batch_size does not divide by GPUs x grad_accum"
        )
        rec = (
            f"{r['parallelism']}, micro-batch {r['micro_batch']}, grad_accum {r['grad_accum']}, "
            f"checkpointing {'on' if r['activation_checkpointing'] else 'off'}: {_gb(r['total_bytes'])} GB"
            if r
            else "nothing fits: more GPUs, GPUs with more memory, or a shorter seq_len"
        )
        lines.append(f"  {stage:<9} configured  {conf}")
        lines.append(f"  {'':<9} recommended {rec}")
        lines.append(
            f"  {'':<9} {s['tokens'] / 1e9:,.2f} B tokens: {s['gpu_hours']:,.0f} GPU-hours "
            f"({s['wall_hours']:,.1f} h on {p['gpus']}) at MFU {p['mfu']:g} of {p['peak_tflops']:g} TFLOP/s"
        )
    lines.append(
        f"all stages: {p['gpu_hours']:,.0f} GPU-hours; most demanding: {p['most_demanding_stage']} "
        f"({'fits' if p['fits'] else 'does not fit'})"
    )
    return "\n".join(lines)


def configured_misfits(p: dict[str, Any]) -> list[str]:
    """The stages whose configured settings do not fit, one line each with the numbers."""
    out = []
    for stage, s in p["stages"].items():
        c, r = s["configured"], s["recommended"]
        if c is None or c["fits"]:
            continue
        fix = (
            f"set {stage}.parallelism={r['parallelism']} {stage}.grad_accum={r['grad_accum']} "
            f"{stage}.activation_checkpointing={str(r['activation_checkpointing']).lower()} "
            f"({_gb(r['total_bytes'])} GB)"
            if r
            else "nothing fits on these GPUs: use more GPUs (nproc) or a shorter seq_len"
        )
        out.append(
            f"{stage}: needs {_gb(c['total_bytes'])} GB per GPU ({c['parallelism']}, micro-batch "
            f"{c['micro_batch']} x {s['seq_len']}: state {_gb(c['state_bytes'])}, working "
            f"{_gb(c['working_bytes'])}, activations {_gb(c['activations_bytes'])}) but "
            f"{_gb(p['usable_bytes_per_gpu'])} GB are usable of {p['gpu_mem_gb']:g} GB; {fix}"
        )
    return out

"""The trainer: one loop for pre-training, mid-training, SFT and QAT.

    from mobilemoe.train import run_stage
    result = run_stage(params, "pretrain", data_dir="data", out_dir="runs/pretrain")
    result.checkpoint            # out_dir/final (weights, config.json, tokenizer, manifest)
    result.summary()             # first/last val loss, tok/s, FLOP/s, MFU, expert load, ...

Modules: ``stage`` (run_stage, torchrun launch), ``result`` (StageResult, finished runs),
``fingerprint`` (the settings that decide the weights, shared with the pipeline's cache),
``run`` (in-process wiring),
``inputs`` (data mix, tokenizer and input checkpoint, checked), ``loop`` (Trainer, the one
loop), ``callbacks`` (validation, speed, MoE load, metrics file, progress bar,
checkpointer), ``checkpointing`` (resume, prune, corrupt fallback), ``loader`` (random
windows, deterministic per step), ``schedule``, ``optim``, ``speed`` (FLOP/s and MFU),
``distributed`` (DDP), ``launch`` (torchrun entry), ``dense`` (the MoE-vs-dense science
check).
"""

from .callbacks import Callback
from .loop import NonFiniteLoss, Trainer, TrainState
from .result import StageResult
from .stage import STAGES, run_stage

__all__ = ["Callback", "NonFiniteLoss", "STAGES", "StageResult", "TrainState", "Trainer", "run_stage"]

"""A training stage's *fingerprint*: the settings that decide its trained weights.

One definition serves both caches: the trainer stores it in every checkpoint (a resume
into a folder with another fingerprint is refused) and the pipeline's stage cache key is
built from the same :func:`weight_settings` (``mobilemoe.pipeline.cache.stage_key``). So
a setting the trainer can resume across (``NON_WEIGHT_KEYS``: parallelism, logging,
validation and checkpoint cadence) never makes the pipeline train a stage again.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..config import Params, to_dict
from ..config.base import flatten

# Settings that do not change the trained weights (beyond float summation order for
# grad_accum/nproc): a resume may change them, and the stage cache ignores them.
NON_WEIGHT_KEYS = (
    "nproc",
    "parallelism",  # ddp <-> fsdp: same math (bf16 casts differ slightly); DCP reshards on resume
    "activation_checkpointing",  # recomputes the same activations
    "grad_accum",
    "log_every",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
)


def weight_settings(params: Params, stage: str) -> dict[str, Any]:
    """The stage's params that decide its weights (its section minus ``NON_WEIGHT_KEYS``,
    the model, seed and precision); inputs (checkpoint, data, code) are added by callers."""
    section = {k: v for k, v in to_dict(getattr(params, stage)).items() if k not in NON_WEIGHT_KEYS}
    return {
        "stage": stage,
        "train": section,
        "model": to_dict(params.model),
        "seed": params.runtime.seed,
        "precision": params.runtime.precision,
    }


def fingerprint(params: Params, stage: str, init_sha: Optional[str], data: dict, tokenizer_sha: str) -> dict:
    """What a checkpoint records: the weight settings plus the exact inputs it trained on."""
    return _jsonable(
        flatten(
            {
                **weight_settings(params, stage),
                "init_checkpoint_sha256": init_sha,
                "data": data,
                "tokenizer_sha256": tokenizer_sha,
            }
        )
    )


def qat_meta(params: Params, stage: str) -> Optional[dict]:
    """The fake-quantization settings a QAT checkpoint records for export (None otherwise)."""
    if stage != "qat":
        return None
    q = params.qat
    return {"scheme": q.scheme, "group_size": q.group_size, "quantize_embedding": q.quantize_embedding}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))

"""The science check: the MoE vs a dense model with the same active parameters.

    cmp = compare_with_dense(params, data_dir, out_dir, moe_result=pretrain_result)
    cmp.to_dict()   # {"moe": {...val_loss...}, "dense": {...}, "val_loss_delta": moe - dense}

The dense counterpart keeps everything but the FFN: each MoE layer's k routed experts +
shared experts become one SwiGLU of width ``top_k * expert_hidden + n_shared *
shared_hidden``, so both models spend the same FLOPs per token (the dense one lacks only
the router's d_model x E weights). It is pre-trained with the same stage section, seed
and therefore the very same batches (the loader is a function of seed, stage and step).
At equal active parameters and tokens, the MoE should reach a lower validation loss:
its extra (inactive) experts are capacity the dense model does not have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import Params
from ..config.model import ModelConfig
from ..errors import UserError
from .result import StageResult
from .stage import run_stage


def dense_counterpart(cfg: ModelConfig) -> ModelConfig:
    if cfg.moe is None:
        raise UserError("model.moe is null: the model is already dense; nothing to compare")
    m = cfg.moe
    width = m.top_k * m.expert_hidden + m.n_shared_experts * m.shared_hidden
    if m.n_dense_layers and cfg.ffn_hidden != width:
        raise UserError(
            f"model.moe.n_dense_layers={m.n_dense_layers} with ffn_hidden="
            f"{cfg.ffn_hidden} != the MoE layers' active width {width}: one dense "
            "width cannot match both; compare a model without dense layers"
        )
    return dataclasses.replace(cfg, name=f"{cfg.name}-dense-active", moe=None, ffn_hidden=width)


@dataclass
class DenseComparison:
    stage: str
    tokens: int
    moe: dict
    dense: dict

    @property
    def val_loss_delta(self) -> Optional[float]:
        a, b = self.moe.get("val_loss"), self.dense.get("val_loss")
        return None if a is None or b is None else a - b

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "tokens": self.tokens,
            "moe": self.moe,
            "dense": self.dense,
            "val_loss_delta": self.val_loss_delta,
        }


def _describe(result: StageResult, cfg: ModelConfig, seq_len: int) -> dict:
    from ..model.accounting import account

    acc = account(cfg, seq_len)
    s = result.summary()
    return {
        "model": cfg.name,
        "val_loss": s["last_val_loss"],
        "first_val_loss": s["first_val_loss"],
        "active_params": acc.active_params,
        "total_params": acc.total_params,
        "flops_per_token": acc.flops_per_token,
        "tok_per_s": s.get("tok_per_s"),
        "train_s": s["train_s"],
        "checkpoint": str(result.checkpoint),
        "val_curve": result.val_curve,
    }


def compare_with_dense(
    params: Params,
    data_dir,
    out_dir,
    moe_result: Optional[StageResult] = None,
    stage: str = "pretrain",
    callbacks=(),
    tokenizer=None,
) -> DenseComparison:
    """Pre-train the dense counterpart on the MoE's batches; report both validation losses.

    ``moe_result``: the MoE's run of the same stage and params (e.g. the pipeline's
    pretrain), so only the dense model trains here; without it the MoE is trained too.
    """
    if stage != "pretrain":
        raise UserError(
            f"the dense comparison trains from initialisation: stage must be pretrain, got {stage!r}"
        )
    out_dir = Path(out_dir)
    if moe_result is None:
        moe_result = run_stage(
            params, stage, data_dir, out_dir / "moe", callbacks=callbacks, tokenizer=tokenizer
        )
    dense_params = dataclasses.replace(params, model=dense_counterpart(params.model))
    dense_result = run_stage(
        dense_params, stage, data_dir, out_dir / "dense", callbacks=callbacks, tokenizer=tokenizer
    )
    seq_len = getattr(params, stage).seq_len
    return DenseComparison(
        stage=stage,
        tokens=dense_result.state.get("tokens", 0),
        moe=_describe(moe_result, params.model, seq_len),
        dense=_describe(dense_result, dense_params.model, seq_len),
    )

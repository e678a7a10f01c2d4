"""What a finished training stage leaves: :class:`StageResult` (``out_dir/result.json``).

``finished_result`` finds it again: a rerun of the same configuration into the same
folder returns it without training (the fingerprint in the final checkpoint must match
and the checkpoint must be intact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import checkpoint_sha256, read_config
from ..errors import UserError
from . import checkpointing as ck

RESULT = "result.json"


@dataclass
class StageResult:
    stage: str
    checkpoint: Path  # out_dir/final
    checkpoint_sha256: str
    out_dir: Path
    state: dict  # TrainState.to_dict(): loss curves, logs, expert load
    speed: dict = field(default_factory=dict)  # tok_per_s, flop_per_s, mfu, peak_*
    resumed_from_step: int = 0
    steps: int = 0

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return [tuple(r) for r in self.state.get("val_loss", [])]

    @property
    def train_curve(self) -> list[tuple[int, float]]:
        return [tuple(r) for r in self.state.get("train_loss", [])]

    def summary(self) -> dict[str, Any]:
        val, train = self.val_curve, self.train_curve
        out: dict[str, Any] = {
            "steps": self.steps,
            "tokens": self.state.get("tokens", 0),
            "train_s": self.state.get("train_s", 0.0),
            "first_val_loss": val[0][1] if val else None,
            "last_val_loss": val[-1][1] if val else None,
            "final_train_loss": train[-1][1] if train else None,
            "resumed_from_step": self.resumed_from_step,
        }
        if val:
            out["val_loss_drop"] = val[0][1] - val[-1][1]
        for k in ("tok_per_s", "flop_per_s", "mfu", "peak_flop_per_s"):
            if self.speed.get(k) is not None:
                out[k] = self.speed[k]
        loads = self.state.get("expert_load") or []
        if loads:
            last = loads[-1]["layers"]
            out["expert_load_max_over_mean"] = max(l["max_over_mean"] for l in last)
            out["expert_load_cv_mean"] = sum(l["cv"] for l in last) / len(last)
        return out

    def history_for_plots(self) -> dict:
        loads: dict[str, list] = {}
        for row in self.state.get("expert_load") or []:
            for i, layer in enumerate(row["layers"]):
                loads.setdefault(str(i), []).append((row["step"], layer["max_over_mean"]))
        return {"train": self.train_curve, "val": self.val_curve, "expert_load": loads}

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "out_dir": str(self.out_dir),
            "state": self.state,
            "speed": self.speed,
            "resumed_from_step": self.resumed_from_step,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        return cls(
            stage=d["stage"],
            checkpoint=Path(d["checkpoint"]),
            checkpoint_sha256=d["checkpoint_sha256"],
            out_dir=Path(d["out_dir"]),
            state=d["state"],
            speed=d.get("speed", {}),
            resumed_from_step=d.get("resumed_from_step", 0),
            steps=d.get("steps", 0),
        )


def finished_result(out_dir: Path, fp: dict) -> Optional[StageResult]:
    """The result of an already finished run of this configuration, if intact."""
    path, final = out_dir / RESULT, out_dir / ck.FINAL
    if not path.is_file() or not final.is_dir():
        return None
    try:
        result = StageResult.from_dict(json.loads(path.read_text()))
        if read_config(final).get("fingerprint") != fp:
            return None
        if checkpoint_sha256(final) != result.checkpoint_sha256:
            return None
    except (ValueError, KeyError, UserError):
        return None
    return result

"""The ``runtime`` and ``tracking`` sections: process-wide settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .base import NonNegativeInt, PositiveInt, require


@dataclass
class RuntimeConfig:
    seed: NonNegativeInt = 1234
    # torch intra-op threads per process. On a 2-core machine with other work running,
    # oversubscribed threads made a step 20x slower (docs/libraries.md#threads): keep this explicit.
    threads: PositiveInt = 2
    # Heavy local work at once: the flow's parallel branches (eval | device_profile |
    # dense_baseline) each take one of these slots (a file lock in the artifact store),
    # so on a small machine they run one after another (keep threads x workers <= cores).
    parallel_workers: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    # Training precision: auto = bf16 autocast on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class TrackingConfig:
    # MLflow tracking URI; null = a sqlite file in the project (.mlflow/mlflow.db).
    # MLFLOW_TRACKING_URI in the environment wins over this. Never put credentials here:
    # servers read them from the environment.
    uri: Optional[str] = None
    experiment: str = "mobilemoe"
    # Where stage outputs (checkpoints, .pte) are cached by key: a local folder (relative
    # to the project). Object storage (s3://) is refused for now; sync the folder instead.
    artifact_store: str = "artifacts"

    def validate(self, key: str) -> None:
        if self.uri is not None:
            require(
                "@" not in self.uri.split("//", 1)[-1].split("/", 1)[0],
                f"{key}.uri",
                "contains credentials (user:password@host); give them through the "
                "environment (MLFLOW_TRACKING_USERNAME/PASSWORD) instead",
            )

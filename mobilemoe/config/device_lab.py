"""The ``device_lab`` section: where profiling jobs go and what they measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .base import positive


@dataclass
class DeviceLabConfig:
    queue: Optional[str] = None  # file://... or s3://bucket/prefix; null = local folder + own runner
    backend: str = "local-cpu"
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 128])
    decode_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    threads: int = 1
    timeout_s: float = 600.0

    def validate(self, key: str) -> None:
        positive(self, key, "decode_tokens", "repeats", "threads", "timeout_s")

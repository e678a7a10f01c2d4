"""The ``device_lab`` section: where profiling jobs go and what they measure.

The flow's ``device_profile`` step turns this into one device-lab job
(``mobilemoe.device_profile``); the protocol itself lives in ``device_lab.schema``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .base import NonNegativeInt, PositiveFloat, PositiveInt, require


@dataclass
class DeviceLabConfig:
    # file:///abs/folder or s3://bucket/prefix of a lab's queue (its runners live next to
    # the devices); null = a local folder queue in the stage's work folder, served for
    # the step's duration by a runner started in-process on this machine's CPU.
    queue: Optional[str] = None
    # S3 endpoint for an s3:// queue (e.g. http://127.0.0.1:8333); null = from the
    # environment (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) or AWS itself. Credentials
    # never go here: boto3 reads them from the environment / AWS config files.
    endpoint_url: Optional[str] = None
    backend: str = "local-cpu"  # what runs the program: local-cpu, or a lab's phone backend
    prompt_lengths: list[PositiveInt] = field(default_factory=lambda: [32, 128])  # tokens, exact
    decode_tokens: PositiveInt = 32  # new tokens per run (the first one ends the prefill)
    repeats: PositiveInt = 3  # measured runs per prompt length (results are medians)
    warmup: NonNegativeInt = 1  # unrecorded runs per prompt length first
    threads: PositiveInt = 1  # runtime threads on the device
    timeout_s: PositiveFloat = 600.0  # how long the step waits; also the job's deadline to start
    poll_s: PositiveFloat = 1.0  # how often the step looks for the result

    def validate(self, key: str) -> None:
        # The queue URI is parsed by mobilemoe.preflight (the device-lab protocol owns its
        # syntax), at the pipeline's start and in every CLI command.
        require(
            self.decode_tokens >= 2,
            f"{key}.decode_tokens",
            f"must be >= 2 (decode speed needs tokens after the first), got {self.decode_tokens}",
        )
        require(bool(self.prompt_lengths), f"{key}.prompt_lengths", "must list at least one length")
        require(
            len(set(self.prompt_lengths)) == len(self.prompt_lengths),
            f"{key}.prompt_lengths",
            f"lengths must be unique, got {self.prompt_lengths}",
        )
        require(
            re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", self.backend) is not None,
            f"{key}.backend",
            f"{self.backend!r} is not a backend name (e.g. local-cpu)",
        )
        if self.endpoint_url is not None:
            require(
                re.match(r"^https?://", self.endpoint_url) is not None,
                f"{key}.endpoint_url",
                f"must be an http(s) URL, got {self.endpoint_url!r}",
            )
            require(
                "@" not in self.endpoint_url.split("//", 1)[-1].split("/", 1)[0],
                f"{key}.endpoint_url",
                "contains credentials (user:password@host); give "
                "them through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY instead",
            )

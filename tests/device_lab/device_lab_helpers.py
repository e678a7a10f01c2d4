"""Helpers shared by the device-lab tests (fixtures live in conftest.py)."""

from __future__ import annotations

import threading

from device_lab.backends.artifact_check import ArtifactCheckBackend
from device_lab.queue import Queue
from device_lab.transport import Retry, open_transport

FAST_RETRY = Retry(attempts=3, base_s=0.05, cap_s=0.2)
SMALL_BENCH = {"prompt_lengths": [8, 24], "decode_tokens": 6, "repeats": 2, "warmup": 1, "threads": 1}


def make_queue(uri: str, lease_s: float = 30.0, endpoint_url: str | None = None) -> Queue:
    return Queue(open_transport(uri, endpoint_url, FAST_RETRY), lease_s=lease_s, settle_poll_s=0.02)


class CountingCheck(ArtifactCheckBackend):
    """The real artifact-check backend, counting how often each job really runs."""

    def __init__(self, counts: dict, lock: threading.Lock):
        self.counts, self.lock = counts, lock

    def run(self, ctx):
        with self.lock:
            self.counts[ctx.job["job_id"]] = self.counts.get(ctx.job["job_id"], 0) + 1
        return super().run(ctx)

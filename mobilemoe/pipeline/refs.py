"""What the flow's steps hand each other: the run's :class:`Context`, the data step's
:class:`CurateRef` and one :class:`StageRef` per stage after it (small, picklable: they
are Metaflow artifacts).

A reference is written once, by the stage that made it (or found in the stage cache), and
never edited by its readers: the next step reads its paths and hashes, the card reads its
numbers and the files it points to (loss curves, evaluation results). Each kind of stage
has its own subclass with the fields it fills: :class:`TrainRef` (the four training
stages), :class:`DenseRef`, :class:`ExportRef`, :class:`EvalRef`, :class:`ProfileRef`.

Read a field as an attribute (``ref.checkpoint``); ``ref["checkpoint"]`` and
``ref.get("model_id")`` read the same, so a Metaflow client reads a run's artifacts as a
mapping too (``run["end"].task.data.exported["pte"]``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from ..config import Params, parse_params


@dataclass
class Context:
    """What every step needs: the params in effect, the pipeline's MLflow run, the code
    and data versions."""

    root: str
    params: dict  # the raw params.yaml content in effect
    pipeline_run_id: str
    pathspec: str
    code_version: str  # every library source (the pipeline run's tag)
    git: dict
    data_version: Optional[dict] = None  # DVC md5s, set by curate
    code_versions: dict = field(default_factory=dict)  # per stage: its import closure's digest
    # model.source: scaling: the scaling run whose design replaced params' model section
    model_source_run_id: Optional[str] = None
    # dvc.lock as curate left it: a step on another machine pulls this data version through
    # DVC from data.remote (mobilemoe.pipeline.ensure_data)
    dvc_lock: Optional[dict] = None

    @property
    def parsed(self) -> Params:
        return parse_params(self.params, "params.yaml")

    def code_for(self, stage: str) -> str:
        """The code version of ``stage`` (the sources it runs), else every source."""
        return self.code_versions.get(stage, self.code_version)


@dataclass(frozen=True)
class CurateRef:
    """The data step's result: the DVC data version every later stage records."""

    run_id: str
    data_version: dict
    stats: dict
    wall_s: float
    dvc_lock: dict = field(default_factory=dict)  # dvc.lock's content (the outputs' md5s)


R = TypeVar("R", bound="StageRef")


@dataclass(frozen=True)
class StageRef:
    """What every stage's output has; ``stage.json`` in the stage cache holds it."""

    stage: str
    key: str  # the cache key (params + inputs + code)
    run_id: str  # this pipeline run's MLflow run of the stage
    produced_by_run_id: str  # the run that made the output (``run_id`` unless reused)
    reused: bool = False
    summary: dict = field(default_factory=dict)  # headline numbers (MLflow metrics)
    # The environment that made the output (mobilemoe.environment.environment()): a reused
    # stage's run names it, since it may differ from the environment reusing it.
    environment: dict = field(default_factory=dict)
    # The cache folder it was written to; the paths above point inside it. Where the folder
    # is found elsewhere (another clone's scratch copy of an s3:// store), they are rebased.
    folder: str = ""

    # -- read-only mapping view --------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        if name not in self._field_names():
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self._field_names() and getattr(self, str(name)) is not None

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name) if name in self._field_names() else None
        return default if value is None else value

    @classmethod
    def _field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    # -- the cache record ----------------------------------------------------------------
    def to_json(self) -> dict:
        """``stage.json``'s content: every cached field."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_CACHED}

    @classmethod
    def from_json(cls: type[R], d: dict) -> R:
        """A reference from ``stage.json`` (unknown keys, from other versions, are ignored;
        a missing required one raises ``TypeError``)."""
        names = cls._field_names() - _NOT_CACHED
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class TrainRef(StageRef):
    """A training stage's checkpoint (``output/``) and its loss curves."""

    checkpoint: str
    checkpoint_sha256: str
    history_file: Optional[str] = None  # loss curves and expert load, for the card's plots

    def history(self) -> dict:
        """The training curves (``{"train": [...], "val": [...], "expert_load": {...}}``)."""
        if self.history_file and Path(self.history_file).is_file():
            return json.loads(Path(self.history_file).read_text())
        return {}


@dataclass(frozen=True, kw_only=True)
class ExportRef(StageRef):
    """The exported program and the LoggedModel that records it."""

    pte: str
    tokenizer: str
    report_path: str
    pte_sha256: str
    checkpoint_sha256: str  # the QAT checkpoint it was made from
    input_run_id: str  # the QAT run
    model_id: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class EvalRef(StageRef):
    """Where the evaluation results are (``{"checkpoint" | "pte": results JSON}``)."""

    results_files: dict

    def results(self) -> dict:
        """Evaluation results by model, read from their files."""
        return {label: json.loads(Path(path).read_text()) for label, path in self.results_files.items()}


@dataclass(frozen=True, kw_only=True)
class ProfileRef(StageRef):
    """A device profile: the device lab's result document for one program."""

    result: dict
    pte_sha256: str
    model_id: Optional[str] = None
    checkpoint_sha256: Optional[str] = None  # the dense baseline's profile: its checkpoint


@dataclass(frozen=True, kw_only=True)
class DenseRef(TrainRef):
    """The dense baseline: a training stage plus the MoE-vs-dense comparison and the dense
    model's device profile (both made after the cache lookup, not cached with it)."""

    comparison: dict = field(default_factory=dict)
    profile: Optional[ProfileRef] = None


@dataclass(frozen=True, kw_only=True)
class ScalingPointRef(StageRef):
    """One point of the scaling sweep: what it trained and its final validation loss (a
    record of :func:`mobilemoe.scaling.law.fit`'s input; ``status`` ok | diverged | failed)."""

    record: dict
    checkpoint: Optional[str] = None  # the point's final weights (ok points)


@dataclass(frozen=True, kw_only=True)
class ScalingRef(StageRef):
    """The sweep's fit, the design it drives, the plots; ``status`` fitted | skipped."""

    status: str
    reason: Optional[str] = None  # why the fit (or the design) was skipped
    records_file: str = ""
    fit_file: Optional[str] = None
    design_file: Optional[str] = None
    plots: list = field(default_factory=list)

    def records(self) -> list[dict]:
        return json.loads(Path(self.records_file).read_text()) if self.records_file else []

    def fit(self) -> Optional[dict]:
        return json.loads(Path(self.fit_file).read_text()) if self.fit_file else None

    def design(self) -> Optional[dict]:
        return json.loads(Path(self.design_file).read_text()) if self.design_file else None


_NOT_CACHED = frozenset({"comparison", "profile"})

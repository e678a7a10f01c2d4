"""The one configuration: ``params.yaml`` loaded into typed, validated sections.

    from mobilemoe.config import load_params, load_preset
    params = load_params()                      # the project's params.yaml
    params = load_preset("mobilemoe-s", ["model.moe.top_k=2"])

DVC reads the same file (``dvc.yaml`` lists its keys) and the flows take it as their
Metaflow ``Config``; presets are complete files in ``presets/`` that a user makes the
project's ``params.yaml`` (``mobilemoe use-preset NAME``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .base import ConfigError, build, fail, flatten, to_dict
from .compute import ComputeConfig
from .data import DataConfig
from .device_lab import DeviceLabConfig
from .evaluation import EvalConfig
from .export import ExportConfig
from .model import ModelConfig, MoEConfig, RopeScaling
from .runtime import RuntimeConfig, TrackingConfig
from .scaling import ScalingConfig
from .train import QATStageConfig, TrainStageConfig

__all__ = [
    "ConfigError",
    "Params",
    "ModelConfig",
    "MoEConfig",
    "RopeScaling",
    "TrainStageConfig",
    "QATStageConfig",
    "load_params",
    "load_preset",
    "parse_params",
    "preset_names",
    "preset_path",
    "project_root",
    "params_path",
    "apply_overrides",
    "to_dict",
    "flatten",
]

TRAIN_STAGES = ("pretrain", "midtrain", "sft", "qat")


@dataclass
class Params:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    pretrain: TrainStageConfig = field(default_factory=TrainStageConfig)
    midtrain: TrainStageConfig = field(default_factory=TrainStageConfig)
    sft: TrainStageConfig = field(default_factory=TrainStageConfig)
    qat: QATStageConfig = field(default_factory=QATStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    device_lab: DeviceLabConfig = field(default_factory=DeviceLabConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def validate(self, key: str) -> None:
        self._validate_compute()
        if self.model.source == "scaling" and self.scaling.sweep is None:
            fail(
                "model.source",
                "scaling designs the model from the scaling sweep's law, and scaling.sweep is "
                "null; give scaling a sweep (docs/scaling.md) or set model.source: params",
            )
        for stage in TRAIN_STAGES:
            cfg: TrainStageConfig = getattr(self, stage)
            if cfg.seq_len > self.model.max_seq_len:
                fail(
                    f"{stage}.seq_len",
                    f"{cfg.seq_len} is longer than model.max_seq_len={self.model.max_seq_len}",
                )
        ctx = self.export.max_seq_len or self.model.max_seq_len
        if self.export.max_seq_len and self.export.max_seq_len > self.model.max_seq_len:
            fail(
                "export.max_seq_len",
                f"{self.export.max_seq_len} is longer than model.max_seq_len={self.model.max_seq_len}",
            )
        lab = self.device_lab
        if lab.prompt_lengths and max(lab.prompt_lengths) + lab.decode_tokens > ctx:
            fail(
                "device_lab.prompt_lengths",
                f"longest prompt {max(lab.prompt_lengths)} + "
                f"decode_tokens {lab.decode_tokens} exceeds the exported context {ctx} "
                "(export.max_seq_len, else model.max_seq_len)",
            )
        # INT4 groups run along each linear's input dim: every input width must split into
        # whole groups (the routed experts' down projection reads expert_hidden inputs).
        m, g = self.model, self.qat.group_size
        widths = {"model.d_model": m.d_model, "model.n_heads x head_dim": m.n_heads * m.resolved_head_dim}
        if any(not m.is_moe_layer(i) for i in range(m.n_layers)):
            widths["model.ffn_hidden"] = m.ffn_hidden
        if m.moe is not None:
            widths["model.moe.expert_hidden"] = m.moe.expert_hidden
            if m.moe.n_shared_experts:
                widths["model.moe.shared_hidden"] = m.moe.n_shared_experts * m.moe.shared_hidden
        for name, width in widths.items():
            if width % g:
                fail(
                    "qat.group_size",
                    f"{g} does not divide {name}={width} (INT4 groups run "
                    "along each linear's input dimension)",
                )

    def _validate_compute(self) -> None:
        """Remote steps hand each other checkpoints through the stage cache: it must be
        on object storage; a training step asks for the GPUs its ranks use."""
        for step in self.compute.remote_steps():
            if "://" not in self.tracking.artifact_store:
                fail(
                    f"compute.{step}.target",
                    f"{getattr(self.compute, step).target} runs the step on another machine, "
                    f"which cannot read the local stage cache tracking.artifact_store="
                    f"{self.tracking.artifact_store!r}; make it s3://bucket/prefix (docs/scale-out.md)",
                )
        for stage in TRAIN_STAGES:
            cfg = getattr(self.compute, stage)
            nproc = getattr(self, stage).nproc
            if cfg.target != "local" and 0 < cfg.gpu < nproc:
                fail(
                    f"compute.{stage}.gpu",
                    f"{cfg.gpu} GPUs for {stage}.nproc={nproc} ranks; ask for {nproc} (one per rank)",
                )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def project_root() -> Path:
    """The project folder: $MOBILEMOE_ROOT, else the checkout this package lives in."""
    env = os.environ.get("MOBILEMOE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").exists() and (here / "presets").is_dir():
        return here
    return Path.cwd().resolve()


def params_path() -> Path:
    return project_root() / "params.yaml"


def preset_dir() -> Path:
    return project_root() / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    # A preset is a name, never a path: "../params" or "/tmp/x" are not presets.
    if name not in preset_names():
        raise ConfigError(
            f"unknown preset {name!r}; available presets: "
            f"{', '.join(preset_names()) or '(none found in ' + str(preset_dir()) + ')'}"
            "; give a file with --file PATH"
        )
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset {name!r}; available presets: "
            f"{', '.join(preset_names()) or '(none found in ' + str(preset_dir()) + ')'}"
        )
    return path


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw params dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. model.moe.top_k=2")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if part not in node:
                raise ConfigError(f"override {key}: unknown key {where!r}")
            if node[part] is None:
                raise ConfigError(
                    f"override {key}: {where} is null in this configuration; set {where} to a mapping first"
                )
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {key}: {where} is not a mapping")
            node = node[part]
        node[parts[-1]] = _parse_value(text)
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (YAML keeps the last one
    silently, so a duplicated ``lr:`` would hide the value the user meant)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: params file not found (copy a preset: "
            f"`mobilemoe use-preset tiny`, or pass an existing file)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: is not UTF-8 text (byte {e.start}); a params file is YAML") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    return parse_yaml_text(text, str(path))


def parse_yaml_text(text: str, where: str) -> dict:
    """The raw params mapping in ``text`` (read from ``where``); any YAML problem, a
    duplicate key included, is a ConfigError naming the line."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}:{at} is not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:  # deeply nested flow collections
        raise ConfigError(f"{where}: nested too deeply to be a params file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def parse_params(raw: dict, source: str = "params", overrides: Iterable[str] = ()) -> Params:
    """Validate a raw dict (e.g. Metaflow's Config value) into :class:`Params`."""
    try:
        raw = apply_overrides(raw, overrides)
        return build(Params, raw, complete=True)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_params(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Params:
    path = Path(path) if path is not None else params_path()
    return parse_params(read_yaml(path), str(path), overrides)


def load_preset(name: str, overrides: Iterable[str] = ()) -> Params:
    return load_params(preset_path(name), overrides)


def flat_params(params: Params, section: str | None = None) -> dict[str, Any]:
    """Flattened ``section.key`` -> value (what MLflow logs as params)."""
    data = params.to_dict() if section is None else {section: to_dict(getattr(params, section))}
    return flatten(data)

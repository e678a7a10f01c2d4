"""params.yaml loading: presets, overrides, and the errors a user can make."""

from __future__ import annotations

import pytest
import yaml

from mobilemoe.config import ConfigError, load_params, load_preset, params_path, preset_names, preset_path

PRESETS = ["smoke", "tiny", "mobilemoe-s", "mobilemoe-m", "mobilemoe-l", "dense-mobilellm-pro", "olmoe-1b-7b"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    params = load_preset(name)
    assert params.model.name == name


def test_presets_are_complete_files():
    # A preset is a whole configuration: every key of tiny.yaml is present in every preset.
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("data",):
                out |= keys(v, prefix + k + ".")
        return out

    ref = keys(yaml.safe_load(preset_path("tiny").read_text()))
    for name in preset_names():
        have = keys(yaml.safe_load(preset_path(name).read_text()))
        optional = ("model.moe.", "model.rope_scaling.", "scaling.sweep.")  # null sections
        missing = {k for k in ref - have if not k.startswith(optional)}
        assert not missing, (name, sorted(missing))
    assert set(PRESETS) <= set(preset_names())


def test_params_yaml_ships_as_tiny():
    assert params_path().read_text() == preset_path("tiny").read_text()
    assert load_params().model.name == "tiny"


def test_overrides_apply_and_validate():
    p = load_preset("tiny", ["model.moe.top_k=3", "pretrain.lr=1e-4", "eval.tasks=[piqa]"])
    assert p.model.moe.top_k == 3 and p.pretrain.lr == 1e-4 and p.eval.tasks == ["piqa"]
    with pytest.raises(ConfigError, match="model.moe.top_k"):
        load_preset("tiny", ["model.moe.top_k=9"])
    with pytest.raises(ConfigError, match="model.moe is null"):
        load_preset("dense-mobilellm-pro", ["model.moe.top_k=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_preset("tiny", ["model.d_model"])


def _write(tmp_path, mutate):
    raw = yaml.safe_load(preset_path("tiny").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "mutate, key, problem",
    [
        (lambda r: r["model"].update(foo=1), "model.foo", "unknown key"),
        (lambda r: r.update(trainer={}), "trainer", "unknown key"),
        (lambda r: r["model"].update(d_model="wide"), "model.d_model", "must be an integer"),
        (lambda r: r["model"].update(qk_norm="yes"), "model.qk_norm", "true or false"),
        (lambda r: r["model"]["moe"].update(top_k=20), "model.moe.top_k", "more than n_routed_experts"),
        (lambda r: r["model"].update(n_heads=3, head_dim=None), "model.n_heads", "does not divide d_model"),
        (lambda r: r["model"].update(n_kv_heads=3), "model.n_kv_heads", "does not divide"),
        (lambda r: r["model"]["moe"].update(router="topk"), "model.moe.router", "must be one of"),
        (lambda r: r["model"].pop("d_model"), "model.d_model", "missing"),
        (lambda r: r["pretrain"].update(seq_len=100000), "pretrain.seq_len", "longer than model.max_seq_len"),
        (lambda r: r["pretrain"].update(lr=-1.0), "pretrain.lr", "must be > 0"),
        (lambda r: r["runtime"].update(threads=0), "runtime.threads", "must be > 0"),
        (lambda r: r["qat"].update(group_size=48), "qat.group_size", "does not divide"),
        (lambda r: r["tracking"].update(uri="http://bob:secret@host:5000"), "tracking.uri", "credentials"),
        # ranges stated on the fields (mobilemoe.config.base.Range)
        (lambda r: r["pretrain"].update(beta2=1.0), "pretrain.beta2", "must be >= 0 and < 1, got 1.0"),
        (lambda r: r["sft"].update(keep_checkpoints=1), "sft.keep_checkpoints", "must be >= 2, got 1"),
        (lambda r: r["data"]["dedup"].update(threshold=0), "data.dedup.threshold", "must be > 0 and <= 1"),
        (
            lambda r: r["data"]["midtrain"].update(source_weights={"x": -1}),
            "data.midtrain.source_weights.x",
            "must be >= 0",
        ),
        (
            lambda r: r["device_lab"].update(prompt_lengths=[8, 0]),
            "device_lab.prompt_lengths[1]",
            "must be > 0",
        ),
        (lambda r: r["model"].update(sliding_window=0), "model.sliding_window", "must be > 0, got 0"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, key, problem):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and problem in msg, msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_params(bad)
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        load_preset("nope")


def _numeric_without_range(cls, prefix=""):
    """Keys of config class ``cls`` whose type is a number (alone, optional or in a list or
    mapping) without a ``Range`` in its annotation."""
    import dataclasses
    import typing

    from mobilemoe.config.base import Range

    def numeric_unranged(tp) -> bool:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return not any(isinstance(m, Range) for m in args[1:])
        if tp in (int, float):
            return True
        return any(numeric_unranged(a) for a in args if not dataclasses.is_dataclass(a))

    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        for sub in (tp, *typing.get_args(tp)):
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                yield from _numeric_without_range(sub, f"{prefix}{f.name}.")
        if numeric_unranged(tp):
            yield prefix + f.name


def test_every_numeric_key_states_its_range():
    from mobilemoe.config import Params
    from mobilemoe.config.data import SourceConfig

    missing = [*_numeric_without_range(Params), *_numeric_without_range(SourceConfig, "data.sources[].")]
    assert not missing, f"numeric keys without a Range in their annotation: {missing}"
    # and the walk sees ranged keys (it would pass vacuously on a type it cannot read)
    assert "pretrain.lr" not in missing and "model.moe.top_k" not in missing


def test_config_keys_lists_types_and_ranges(capsys):
    from mobilemoe.cli import main

    assert main(["config", "--keys"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["pretrain.beta2"].strip() == "float >= 0 and < 1"
    assert lines["model.moe.top_k"].strip() == "int > 0"
    assert lines["data.sources[].max_docs"].strip() == "int > 0 | null"

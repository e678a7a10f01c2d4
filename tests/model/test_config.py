"""params.yaml loading: presets, overrides, and the errors a user can make."""

from __future__ import annotations

import pytest
import yaml

from mobilemoe.config import (ConfigError, load_params, load_preset, params_path, preset_names,
                              preset_path)

PRESETS = ["smoke", "tiny", "mobilemoe-s", "mobilemoe-m", "mobilemoe-l", "dense-mobilellm-pro",
           "olmoe-1b-7b"]


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
        missing = {k for k in ref - have if not k.startswith(("model.moe.", "model.rope_scaling."))}
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


@pytest.mark.parametrize("mutate, key, problem", [
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
])
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

"""The params loader on arbitrary input: every file either loads or fails with one
ConfigError naming the key, never another exception (property-based), plus the cases
found by adversarial review: non-finite numbers, duplicate keys, use-preset paths."""

from __future__ import annotations

import shutil

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilemoe.cli import main
from mobilemoe.config import ConfigError, load_params, preset_path, project_root

TINY = yaml.safe_load(preset_path("tiny").read_text())


def _leaves(d, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,)


LEAVES = sorted(_leaves(TINY))
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.lists(st.integers(-5, 5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
)


def _load(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    try:
        return load_params(path)
    except ConfigError as e:
        assert "\n" not in str(e).strip() or str(path) in str(e), str(e)
        return e


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(LEAVES), value=VALUES)
def test_any_value_at_any_key_loads_or_names_the_key(tmp_path_factory, path, value):
    import copy

    raw = copy.deepcopy(TINY)
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    out = _load(tmp_path_factory.mktemp("p"), yaml.safe_dump(raw))
    if isinstance(out, ConfigError):
        assert ".".join(path[:1]) in str(out), str(out)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200))
def test_any_text_loads_or_gives_a_config_error(tmp_path_factory, text):
    _load(tmp_path_factory.mktemp("p"), text)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "1e999"])
def test_non_finite_numbers_are_refused_at_load(tmp_path, value):
    raw = yaml.safe_dump(TINY).replace("lr: 0.003", f"lr: {value}", 1)
    assert f"lr: {value}" in raw
    out = _load(tmp_path, raw)
    assert isinstance(out, ConfigError) and "pretrain.lr" in str(out) and "finite" in str(out), out


def test_duplicate_keys_are_an_error(tmp_path):
    # the top-level section (compute: has a pretrain: of its own)
    text = yaml.safe_dump(TINY).replace("\npretrain:\n", "\npretrain:\n  lr: 0.5\n", 1)
    out = _load(tmp_path, text)
    assert isinstance(out, ConfigError) and "duplicate key 'lr'" in str(out), out


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(project_root() / "presets", root / "presets")
    shutil.copy(project_root() / "params.yaml", root / "params.yaml")
    monkeypatch.setenv("MOBILEMOE_ROOT", str(root))
    return root


@pytest.mark.parametrize(
    "arg", ["../params", "../presets/tiny", "/etc/passwd", "presets/tiny", "tiny.yaml", "", "nope"]
)
def test_use_preset_takes_only_names_and_never_touches_params_on_failure(project, arg, capsys):
    before = (project / "params.yaml").read_bytes()
    rc = main(["use-preset", arg])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "params.yaml.bak").exists()


def test_use_preset_file_validates_then_installs(project, tmp_path, capsys):
    before = (project / "params.yaml").read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(TINY).replace("lr: 0.003", "lr: .nan", 1))
    assert main(["use-preset", "--file", str(bad)]) == 2
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "params.yaml.bak").exists()
    assert main(["use-preset", "--file", str(project / "params.yaml")]) == 0  # itself: no-op
    assert not (project / "params.yaml.bak").exists()
    assert main(["use-preset", "smoke"]) == 0
    assert (project / "params.yaml").read_bytes() == (project / "presets" / "smoke.yaml").read_bytes()
    assert (project / "params.yaml.bak").read_bytes() == before
    capsys.readouterr()

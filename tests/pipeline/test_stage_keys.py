"""The stage cache's keys: editing one section changes the keys of the stages that read it
and of everything downstream through their inputs, and nothing else; a stage's code
version covers the code it runs. (The whole flow
rerun that shows it end to end is ``test_flow.py::test_param_edit_redoes_only_the_affected_stage``,
marked slow.)"""

from __future__ import annotations

from pathlib import Path

from mobilemoe.config import load_preset
from mobilemoe.pipeline import stage_key

DATA = {"data/cleaned": "abc"}


def _keys(params):
    return {s: stage_key(s, params, "up", DATA, "code1") for s in ("pretrain", "midtrain", "sft", "qat")}


def test_an_eval_or_device_edit_keeps_every_training_key():
    base = _keys(load_preset("smoke"))
    for edit in (
        "eval.limit=5",
        "device_lab.decode_tokens=4",
        "export.max_seq_len=64",
        "pretrain.log_every=3",
    ):
        assert _keys(load_preset("smoke", [edit])) == base, edit


def test_a_training_edit_changes_only_that_stage_key():
    base = _keys(load_preset("smoke"))
    edited = _keys(load_preset("smoke", ["sft.lr=1e-4"]))
    assert {s for s in base if base[s] != edited[s]} == {"sft"}
    # a model edit changes every stage; the code version and the upstream do too
    model = _keys(load_preset("smoke", ["model.init_std=0.03"]))
    assert all(base[s] != model[s] for s in base)
    params = load_preset("smoke")
    assert stage_key("sft", params, "up", DATA, "code2") != base["sft"]
    assert stage_key("sft", params, "other", DATA, "code1") != base["sft"]
    assert stage_key("sft", params, "up", {"data/cleaned": "xyz"}, "code1") != base["sft"]


def test_a_setting_the_trainer_resumes_across_keeps_the_stage_key():
    """One fingerprint: the stage key leaves out exactly what the trainer's checkpoint
    fingerprint leaves out, so e.g. editing ``pretrain.eval_every`` after a finished run
    reuses pretrain instead of training it again from scratch."""
    from mobilemoe.train.fingerprint import NON_WEIGHT_KEYS, fingerprint

    base = load_preset("smoke")
    edits = {
        "eval_every": 7,
        "eval_batches": 3,
        "checkpoint_every": 11,
        "keep_checkpoints": 5,
        "grad_accum": 2,
        "log_every": 3,
        "nproc": 2,
        "parallelism": "fsdp",
        "activation_checkpointing": "true",
    }
    assert set(edits) == set(NON_WEIGHT_KEYS)
    for name, value in edits.items():
        edited = load_preset("smoke", [f"pretrain.{name}={value}"])
        assert _keys(edited)["pretrain"] == _keys(base)["pretrain"], name
        assert fingerprint(edited, "pretrain", None, DATA, "tok") == fingerprint(
            base, "pretrain", None, DATA, "tok"
        ), name
    # and a setting the trainer refuses to resume across changes both
    edited = load_preset("smoke", ["pretrain.warmup_steps=3"])
    assert _keys(edited)["pretrain"] != _keys(base)["pretrain"]
    assert fingerprint(edited, "pretrain", None, DATA, "tok") != fingerprint(
        base, "pretrain", None, DATA, "tok"
    )


def _package_copy(tmp_path):
    import shutil

    root = Path(__file__).resolve().parents[2]
    for pkg in ("mobilemoe", "device_lab"):
        shutil.copytree(root / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_code_version_of_a_stage_covers_its_import_closure_only(tmp_path):
    """Editing the evaluation code leaves the pretraining code version (and so its cache
    key) as it was; editing a module pretraining runs, even one imported inside a
    function, changes it."""
    from mobilemoe.lineage import code_version, import_closure
    from mobilemoe.pipeline import STAGE_CODE

    root = _package_copy(tmp_path)
    modules = STAGE_CODE["pretrain"]
    closure = import_closure(modules, root)
    assert "mobilemoe.train.loop" in closure and "mobilemoe.model.moe" in closure
    assert "mobilemoe.quant.qat" in closure  # imported inside a function (QAT wrapping)
    assert not [m for m in closure if m.startswith("mobilemoe.eval")]
    assert "mobilemoe.eval.runner" in import_closure(STAGE_CODE["eval"], root)
    before = code_version(root, modules)
    eval_before = code_version(root, STAGE_CODE["eval"])

    runner = root / "mobilemoe" / "eval" / "runner.py"
    runner.write_text(runner.read_text() + "\n# an edit of the evaluation code\n")
    assert code_version(root, modules) == before
    assert code_version(root, STAGE_CODE["eval"]) != eval_before

    qat = root / "mobilemoe" / "quant" / "qat.py"
    qat.write_text(qat.read_text() + "\n# an edit of code pretraining can run\n")
    assert code_version(root, modules) != before


def test_import_closure_resolves_relative_and_nested_imports(tmp_path):
    from mobilemoe.lineage import import_closure

    pkg = tmp_path / "mobilemoe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n    from . import c\n")
    (pkg / "b.py").write_text("import os\nimport mobilemoe.d\n")
    (pkg / "c.py").write_text("x = 1\n")  # not reached: mobilemoe.c is not mobilemoe.sub.c
    (pkg / "sub" / "c.py").write_text("y = 1\n")
    (pkg / "d.py").write_text("")
    (pkg / "unused.py").write_text("")
    assert set(import_closure(["mobilemoe.sub"], tmp_path)) == {
        "mobilemoe",
        "mobilemoe.sub",
        "mobilemoe.sub.a",
        "mobilemoe.sub.c",
        "mobilemoe.b",
        "mobilemoe.d",
    }

"""The stage cache's keys: editing one section changes the keys of the stages that read it
and of everything downstream through their inputs, and nothing else. (The whole flow
rerun that shows it end to end is ``test_flow.py::test_param_edit_redoes_only_the_affected_stage``,
marked slow.)"""

from __future__ import annotations

from mobilemoe.config import load_preset
from mobilemoe.pipeline import stage_key

DATA = {"data/cleaned": "abc"}


def _keys(params):
    return {s: stage_key(s, params, "up", DATA, "code1") for s in ("pretrain", "midtrain", "sft", "qat")}


def test_an_eval_or_device_edit_keeps_every_training_key():
    base = _keys(load_preset("smoke"))
    for edit in ("eval.limit=5", "device_lab.decode_tokens=4", "export.max_seq_len=64",
                 "pretrain.log_every=3"):
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

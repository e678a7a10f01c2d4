"""``mobilemoe eval`` and the stock ``lm_eval`` command (models registered by the
interpreter start-up hook); bad input ends in one ``error:`` line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mobilemoe.cli import main

VENV_BIN = Path(sys.executable).parent


def test_eval_prints_a_table_and_writes_json(smoke_checkpoint, tmp_path, capsys):
    out = tmp_path / "results.json"
    rc = main(
        [
            "eval",
            "--checkpoint",
            str(smoke_checkpoint),
            "--preset",
            "smoke",
            "--tasks",
            "arc_easy,winogrande",
            "--limit",
            "6",
            "--batch-size",
            "4",
            "--json",
            str(out),
            "runtime.threads=1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "metric", "score", "stderr", "n", "chance", "truncated"]
    rows = {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.split() and line.split()[0] in ("arc_easy", "winogrande")
    }
    assert rows["arc_easy"][1] == "acc_norm" and rows["arc_easy"][4] == "6"
    assert rows["winogrande"][1] == "acc"
    results = json.loads(out.read_text())
    r = results["tasks"]["arc_easy"]
    assert r["n"] == 6 and 0.0 <= r["score"] <= 1.0 and r["stderr"] > 0
    assert f"{r['score']:.4f}" == rows["arc_easy"][2]
    assert results["model"]["kind"] == "checkpoint" and results["model"]["sha256"]
    assert results["settings"]["limit"] == 6 and results["settings"]["num_fewshot"] == 0
    assert list(results["tasks"]) == ["arc_easy", "winogrande"]
    from mobilemoe.eval import flat_metrics

    flat = flat_metrics(results)  # what the flow step logs to MLflow
    assert flat["eval/arc_easy/acc_norm"] == r["score"] and flat["eval/arc_easy/n"] == 6
    assert flat["eval/winogrande/acc_stderr"] > 0 and "eval/winogrande/chance" in flat


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_inputs_end_in_one_clear_message(smoke_checkpoint, tmp_path, capsys):
    base = ["eval", "--preset", "smoke", "--tasks", "arc_easy", "--limit", "2"]
    assert "checkpoint folder not found" in _error(capsys, base + ["--checkpoint", str(tmp_path / "nope")])
    assert ".pte) not found" in _error(capsys, base + ["--pte", str(tmp_path / "model.pte")])
    msg = _error(
        capsys,
        ["eval", "--preset", "smoke", "--checkpoint", str(smoke_checkpoint), "--tasks", "arc_easy,hellaswgg"],
    )
    assert "hellaswgg" in msg and "available offline" in msg and "winogrande" in msg
    assert "'all'" in _error(capsys, base + ["--checkpoint", str(smoke_checkpoint), "--limit", "lots"])
    assert "--checkpoint DIR or --pte FILE" in _error(capsys, ["eval", "--preset", "smoke"])


def test_tokenizer_model_mismatch_is_refused(smoke_checkpoint, tmp_path, capsys):
    from mobilemoe.data.tokenizer import train_tokenizer

    texts = [f"sample text number {i} with some words in it" for i in range(200)]
    other = tmp_path / "other.json"
    train_tokenizer(texts, 300).save(str(other))
    msg = _error(
        capsys,
        [
            "eval",
            "--preset",
            "smoke",
            "--checkpoint",
            str(smoke_checkpoint),
            "--tokenizer",
            str(other),
            "--tasks",
            "arc_easy",
        ],
    )
    assert "not the tokenizer" in msg and "tokenizer_sha256" in msg
    # a checkpoint whose own tokenizer is bigger than the model's vocabulary
    bad = tmp_path / "ckpt"
    shutil.copytree(smoke_checkpoint, bad)
    big = train_tokenizer(texts * 3 + [f"w{i}x{i * 7}" for i in range(3000)], 700)
    big.save(str(bad / "tokenizer.json"))
    from mobilemoe.errors import UserError
    from mobilemoe.eval.lm_model import MobileMoELM

    with pytest.raises(UserError, match="vocab_size"):
        MobileMoELM(checkpoint=str(bad), verify=False)


def test_start_up_hook_registers_our_models_with_lm_eval():
    """What the stock `lm_eval` command sees: a fresh interpreter that imports lm-eval's
    registry gets our models without importing mobilemoe itself."""
    code = (
        "import sys, lm_eval.api.registry as r\n"
        "print(r.get_model('mobilemoe').__module__, r.get_model('mobilemoe-pte').__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mobilemoe.eval.lm_model", "MobileMoEPteLM"]


def test_stock_task_manager_finds_our_tasks_through_include_path(capsys):
    """The start-up hook leaves lm-eval's TaskManager as it is (no include_path: none);
    the stock command finds our offline tasks with ``--include_path "$(mobilemoe eval
    --task-dir)"``, and they take precedence over lm-eval's tasks of the same names."""
    assert main(["eval", "--task-dir"]) == 0
    folder = capsys.readouterr().out.strip()
    code = (
        "import sys\n"
        "from lm_eval.tasks import TaskManager\n"
        "print(TaskManager(include_defaults=False).include_path)\n"
        "print(TaskManager(include_path=sys.argv[1]).task_index['arc_easy'].yaml_path)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    default, arc_easy = out.stdout.split()
    assert default == "None"
    assert Path(arc_easy) == Path(folder) / "official" / "arc_easy.yaml"


def test_commands_check_task_names_before_any_work(tmp_path, capsys):
    """Task names are checked by the preflight that every command runs after loading
    params (config cannot know the suite): one error line naming the file and key, and
    nothing written."""
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--stage",
            "pretrain",
            "--out",
            str(out),
            "--preset",
            "smoke",
            "eval.tasks=[piqa,hellaswag2]",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "smoke.yaml: eval.tasks: unknown task(s) hellaswag2" in err
    assert not out.exists()


def test_task_dir_and_list_tasks(capsys):
    assert main(["eval", "--task-dir"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "official" / "arc_easy.yaml").is_file() and (folder / "DONE").is_file()
    assert main(["eval", "--list-tasks"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert {"arc_easy", "mmlu", "mmlu_anatomy", "humaneval_bpb"} <= set(names)


@pytest.mark.slow
def test_stock_lm_eval_command_runs_our_model_offline(smoke_checkpoint, tmp_path):
    """`lm_eval --model mobilemoe --include_path "$(mobilemoe eval --task-dir)"` from another
    directory, exactly as a user types it (no offline variables): the start-up hook
    registers the model, the include path brings our offline tasks."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    task_dir = subprocess.run(
        [str(VENV_BIN / "mobilemoe"), "eval", "--task-dir"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=True,
    ).stdout.strip()
    cmd = [
        str(VENV_BIN / "lm_eval"),
        "--include_path",
        task_dir,
        "--model",
        "mobilemoe",
        "--model_args",
        f"checkpoint={smoke_checkpoint},threads=1",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--tasks",
        "arc_easy,nq_open",
        "--limit",
        "4",
        "--output_path",
        str(tmp_path / "out"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (result_file,) = list((tmp_path / "out").rglob("results_*.json"))
    results = json.loads(result_file.read_text())["results"]
    assert 0.0 <= results["arc_easy"]["acc,none"] <= 1.0
    assert "exact_match,remove_whitespace" in results["nq_open"]

"""Slow checks with the ecosystem's own runners: ``lm_eval --model hf`` on the exported
folder scores what ``--model mobilemoe`` scores on the checkpoint, and ExecuTorch's
``TextLLMRunner`` adds exactly one BOS to a plain prompt with the shipped tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TASKS = ["arc_easy", "openbookqa"]  # short continuations: HFLM asserts they fit its window


def _lm_eval(args: list[str], out: Path, env: dict) -> dict:
    cmd = [str(BIN / "lm_eval"), *args, "--tasks", ",".join(TASKS), "--limit", "50"]
    cmd += ["--batch_size", "8", "--output_path", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.rglob("results_*.json"))
    assert files, proc.stdout[-2000:]
    return json.loads(files[-1].read_text())["results"]


@pytest.mark.slow
def test_lm_eval_hf_scores_what_mobilemoe_scores(tiny_export, tmp_path):
    ckpt, folder = tiny_export
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MOBILEMOE_EVAL_TASKS_DIR": str(tmp_path / "tasks"),
    }
    task_dir = subprocess.run(
        [str(BIN / "mobilemoe"), "eval", "--task-dir"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    common = ["--include_path", task_dir]
    hf = _lm_eval(
        ["--model", "hf", "--model_args", f"pretrained={folder},dtype=float32", *common], tmp_path / "hf", env
    )
    ours = _lm_eval(
        ["--model", "mobilemoe", "--model_args", f"checkpoint={ckpt}", *common], tmp_path / "ours", env
    )
    for task in TASKS:
        print(task, "hf", hf[task]["acc,none"], "mobilemoe", ours[task]["acc,none"])
        assert hf[task]["acc,none"] == ours[task]["acc,none"]
        assert hf[task]["acc_norm,none"] == ours[task]["acc_norm,none"]


@pytest.mark.slow
def test_text_llm_runner_adds_one_bos_to_a_plain_prompt(hf_variant, tmp_path):
    """The exported folder's tokenizer (beside the .pte) makes ``num_bos=1`` add one BOS:
    the runner's prompt is BOS + the text's tokens, and it generates our greedy tokens."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from mobilemoe.export import PteModel, export_pte
    from mobilemoe.generate import encode_prompt

    ckpt, _ = hf_variant("dense")
    out = tmp_path / "pte"
    export_pte(ckpt, out, quantize="none", max_seq_len=64, parity=False)
    pte = PteModel(out / "model.pte")
    text = "The river runs past the old mill."
    ids = encode_prompt(pte.tokenizer, text, chat=False)  # BOS + text
    runner = TextLLMRunner(str(out / "model.pte"), str(out / "tokenizer.json"))
    stats: list = []
    runner.generate(
        text,
        GenerationConfig(max_new_tokens=4, temperature=0.0, echo=False, num_bos=1, num_eos=0),
        stats_callback=lambda s: stats.append(json.loads(s.to_json_string())),
    )
    assert stats[-1]["prompt_tokens"] == len(ids)  # one BOS, not two, not none

"""A corrupt, truncated or foreign ``.pte`` gives one ``error:`` line naming the file in
every entry point (mobilemoe generate/eval, the lm-eval models, the stock lm_eval CLI,
the device-lab benchmark child), never a native abort of the caller. ExecuTorch aborts
the process on some of these files, so the loaders probe them in a child first."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mobilemoe.cli import main

_rng = random.Random(13)
BAD = {
    "empty.pte": b"",
    "text.pte": b"not a program\n",
    "random.pte": bytes(_rng.randrange(256) for _ in range(4096)),
    # The file identifier, then garbage: this is what made the runtime abort (exit 134).
    "header-then-garbage.pte": b"\x1c\x00\x00\x00ET12" + bytes(_rng.randrange(256) for _ in range(4096)),
    "header-only.pte": b"\x1c\x00\x00\x00ET12",
}


@pytest.fixture
def bad_programs(tmp_path):
    for name, data in BAD.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _one_error(capsys, argv, name) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], err
    return err[0]


def test_cli_generate_and_eval_refuse_bad_programs(bad_programs, tokenizer_file, capsys):
    for name in BAD:
        pte = str(bad_programs / name)
        _one_error(
            capsys, ["generate", "--pte", pte, "--prompt", "x", "--tokenizer", str(tokenizer_file)], name
        )
        _one_error(
            capsys,
            [
                "eval",
                "--preset",
                "smoke",
                "--tasks",
                "arc_easy",
                "--limit",
                "2",
                "--pte",
                pte,
                "--tokenizer",
                str(tokenizer_file),
            ],
            name,
        )


def test_lm_eval_models_turn_user_errors_into_one_line(bad_programs, tokenizer_file, tmp_path, capsys):
    from mobilemoe.eval.lm_model import MobileMoELM, MobileMoEPteLM

    pte = bad_programs / "header-then-garbage.pte"
    with pytest.raises(SystemExit) as e:
        MobileMoEPteLM.create_from_arg_string(f"pte={pte},tokenizer={tokenizer_file}")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and pte.name in err[0]
    with pytest.raises(SystemExit) as e:
        MobileMoELM.create_from_arg_obj({"checkpoint": str(tmp_path / "nope")})
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "nope" in err[0]


def test_lm_eval_model_refuses_a_stale_manifest_in_one_line(smoke_checkpoint, tmp_path, capsys):
    """Weights edited after the manifest was written: one error line naming the file."""
    import shutil

    from mobilemoe.eval.lm_model import MobileMoELM

    ckpt = tmp_path / "stale"
    shutil.copytree(smoke_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        MobileMoELM.create_from_arg_obj({"checkpoint": str(ckpt)})
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "model.safetensors" in err[0], err


@pytest.mark.slow  # three lm_eval start-ups (~45 s)
def test_stock_lm_eval_cli_prints_one_error_line(bad_programs, tokenizer_file, smoke_checkpoint, tmp_path):
    lm_eval = Path(sys.executable).with_name("lm_eval")
    if not lm_eval.exists():
        pytest.skip("lm_eval is not installed in this environment")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    from mobilemoe.eval.suite import build_task_dir

    task_dir = str(build_task_dir())  # what `mobilemoe eval --task-dir` prints
    stale = tmp_path / "stale-ckpt"
    shutil.copytree(smoke_checkpoint, stale)
    (stale / "config.json").write_text((stale / "config.json").read_text() + " ")  # after the manifest
    for model, args, name in [
        ("mobilemoe", f"checkpoint={tmp_path / 'missing-ckpt'}", "missing-ckpt"),
        ("mobilemoe", f"checkpoint={stale}", "config.json"),
        ("mobilemoe-pte", f"pte={bad_programs / 'random.pte'},tokenizer={tokenizer_file}", "random.pte"),
    ]:
        proc = subprocess.run(
            [
                str(lm_eval),
                "--include_path",
                task_dir,
                "--model",
                model,
                "--model_args",
                args,
                "--tasks",
                "arc_easy",
                "--limit",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and name in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]

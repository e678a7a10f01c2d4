"""Bad input ends in one clear message naming the file/key; a diverged run keeps its last
good checkpoint and names the step."""

from __future__ import annotations

import pytest
import torch
from train_helpers import PRETRAIN, smoke_params

from mobilemoe.checkpoint import CheckpointError, save_checkpoint, verify
from mobilemoe.cli import main as cli_main
from mobilemoe.data.tokenizer import train_tokenizer
from mobilemoe.errors import UserError
from mobilemoe.train import NonFiniteLoss, run_stage


def test_checkpoint_of_another_architecture(smoke_checkpoint, data_root, tmp_path):
    p = smoke_params("model.d_model=96", "model.moe.n_routed_experts=8")
    with pytest.raises(
        CheckpointError, match=r"different architecture.*model.d_model: checkpoint 64, configured 96"
    ):
        run_stage(p, "midtrain", data_dir=data_root, out_dir=tmp_path / "o", init_checkpoint=smoke_checkpoint)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_missing_input_checkpoint(data_root, tmp_path):
    with pytest.raises(UserError, match="midtrain starts from the pretrain checkpoint"):
        run_stage(smoke_params(), "midtrain", data_dir=data_root, out_dir=tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"nope: input checkpoint for sft not found"):
        run_stage(
            smoke_params(),
            "sft",
            data_dir=data_root,
            out_dir=tmp_path / "o",
            init_checkpoint=tmp_path / "nope",
        )


def test_tokenizer_that_does_not_match_the_data(data_root, tmp_path):
    other = tmp_path / "other_tokenizer.json"
    train_tokenizer(["a completely different corpus of words " * 50, "zebra quartz " * 80], 300).save(
        str(other)
    )
    with pytest.raises(
        UserError, match=r"other_tokenizer.json: tokenizer .* does not match the one the data"
    ):
        run_stage(smoke_params(), "pretrain", data_dir=data_root, out_dir=tmp_path / "o", tokenizer=other)


def test_checkpoint_trained_with_another_tokenizer(data_root, tmp_path):
    other = tmp_path / "tok.json"
    train_tokenizer(["another corpus entirely, with other merges " * 40], 300).save(str(other))
    torch.manual_seed(0)
    from mobilemoe.model import build_model

    ckpt = tmp_path / "foreign"
    save_checkpoint(ckpt, build_model(smoke_params().model), {"stage": "pretrain"}, tokenizer=other)
    with pytest.raises(UserError, match="input checkpoint was trained with another tokenizer"):
        run_stage(
            smoke_params(),
            "midtrain",
            data_dir=data_root,
            out_dir=tmp_path / "o",
            init_checkpoint=ckpt,
            tokenizer=data_root / "tokenizer.json",
        )


def test_missing_shards_and_vocab_mismatch(data_root, tmp_path):
    with pytest.raises(UserError, match=r"no token shards of the 'sft' mix"):
        run_stage(smoke_params(), "sft", data_dir=tmp_path, out_dir=tmp_path / "o", init_checkpoint=tmp_path)
    with pytest.raises(UserError, match=r"vocab_size=512 but model.vocab_size=300"):
        run_stage(
            smoke_params("model.vocab_size=300"), "pretrain", data_dir=data_root, out_dir=tmp_path / "o"
        )


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good(data_root, tmp_path):
    class PoisonAfter6:
        def on_step_end(self, trainer):
            if trainer.state.step == 6:
                with torch.no_grad():
                    trainer.model.norm.weight.fill_(float("nan"))

    out = tmp_path / "nan"
    with pytest.raises(
        NonFiniteLoss,
        match=r"not finite \(nan/inf\) at step 7 of 12; the last good "
        r"checkpoint .*step_000004 is kept",
    ):
        run_stage(
            smoke_params(*PRETRAIN),
            "pretrain",
            data_dir=data_root,
            out_dir=out,
            callbacks=[PoisonAfter6()],
            progress=False,
        )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000004"]
    verify(out / "checkpoints" / "step_000004")
    assert not (out / "final").exists()


def test_cli_trains_and_reports_bad_input_in_one_line(data_root, tmp_path, capsys):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(smoke_params("pretrain.steps=2", "pretrain.eval_every=2").to_dict())
    )
    rc = cli_main(
        [
            "train",
            "--stage",
            "pretrain",
            "--out",
            str(tmp_path / "run"),
            "--data",
            str(data_root),
            "--params",
            str(params_file),
            "--json",
        ]
    )
    assert rc == 0
    assert '"last_val_loss"' in capsys.readouterr().out
    assert (tmp_path / "run" / "final" / "manifest.json").is_file()

    rc = cli_main(
        [
            "train",
            "--stage",
            "sft",
            "--out",
            str(tmp_path / "run2"),
            "--data",
            str(data_root),
            "--params",
            str(params_file),
            "--init",
            str(tmp_path / "missing"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]


def test_config_edited_consistently_to_another_size_is_one_error(smoke_checkpoint, tmp_path):
    """config.json and the manifest edited together (the manifest verifies) to another
    d_model: the weights' shapes give it away, as one CheckpointError naming the file."""
    import json
    import shutil

    from mobilemoe.checkpoint import load_checkpoint, write_manifest

    folder = tmp_path / "edited"
    shutil.copytree(smoke_checkpoint, folder)
    cfg = json.loads((folder / "config.json").read_text())
    model = cfg["model"] if "model" in cfg else cfg
    model["d_model"] = model["d_model"] * 2
    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder)
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: weights do not match config.json.*differ in shape"
    ):
        load_checkpoint(folder)

"""``mobilemoe hf import``/``export``: the round trip, shards, QAT, init_from, presets,
and the messages for what does not map."""

from __future__ import annotations

import json
import shutil

import pytest
from hf_helpers import make_checkpoint, model_config

from mobilemoe.errors import UserError


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_round_trip_is_bit_identical(hf_variant, tmp_path):
    from mobilemoe.hf import import_hf

    for variant in ("tiny", "dense_window"):
        ckpt, folder = hf_variant(variant)
        r = import_hf(folder, tmp_path / variant)
        assert r["restored"]
        assert _manifest(tmp_path / variant) == _manifest(ckpt)  # every file's sha256 and bytes
        assert (tmp_path / variant / "config.json").read_bytes() == (ckpt / "config.json").read_bytes()


def test_sharded_qat_export_loads_and_imports(tmp_path, tokenizer_file):
    """A QAT checkpoint exports its float weights (and says so); shards load in transformers
    and import back to the same weights; the CLI prints one line per outcome."""
    import torch
    from transformers import AutoModelForCausalLM

    from mobilemoe.checkpoint import load_checkpoint
    from mobilemoe.cli import main

    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_file, "tiny", stage="qat")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["qat"] = {"scheme": "8da4w", "group_size": 32, "quantize_embedding": True}
    shutil.copytree(ckpt, tmp_path / "qat")
    (tmp_path / "qat" / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    from mobilemoe.checkpoint import write_manifest

    write_manifest(tmp_path / "qat")
    hf = tmp_path / "hf"
    assert (
        main(
            [
                "hf",
                "export",
                "--checkpoint",
                str(tmp_path / "qat"),
                "--out",
                str(hf),
                "--max-shard-size",
                "300KB",
            ]
        )
        == 0
    )
    assert (hf / "model.safetensors.index.json").is_file() and len(list(hf.glob("*.safetensors"))) > 2
    card = (hf / "README.md").read_text()
    assert "float (fp32) weights of a quantization-aware" in card and "Glm4MoeForCausalLM" in card
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    ours, _ = load_checkpoint(tmp_path / "qat")
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, ours.tok_embeddings.weight) and model.lm_head.weight is emb  # tied
    assert main(["hf", "import", str(hf), "--out", str(tmp_path / "back")]) == 0
    assert _manifest(tmp_path / "back") == _manifest(tmp_path / "qat")


def test_foreign_folder_imports_as_hf_import_stage(tiny_export, tmp_path):
    """Without our sidecar (a folder transformers itself wrote) the weights still map; the
    checkpoint says where it came from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mobilemoe.checkpoint import load_checkpoint
    from mobilemoe.hf import import_hf

    ckpt, folder = tiny_export
    saved = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(str(folder)).save_pretrained(str(saved))
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(saved))
    r = import_hf(saved, tmp_path / "ours")
    assert not r["restored"]
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["stage"] == "hf-import" and cfg["hf_import"]["architecture"] == "Glm4MoeForCausalLM"
    a, _ = load_checkpoint(ckpt)
    b, _ = load_checkpoint(tmp_path / "ours")
    sa, sb = a.state_dict(), b.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)
    assert (tmp_path / "ours" / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()


def test_init_from_resolves_once_and_checks_the_architecture(tiny_export, tmp_path):
    import dataclasses

    from mobilemoe.hf import resolve_init_from

    ckpt, folder = tiny_export
    cfg = dataclasses.replace(model_config("tiny"), name="other", init_std=0.01)
    path = resolve_init_from(f"hf:{folder}", tmp_path, cfg)
    got = json.loads((path / "config.json").read_text())["model"]
    assert got["init_std"] == 0.01  # training-only settings come from the configured model
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert resolve_init_from(f"hf:{folder}", tmp_path, cfg) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp  # reused, not imported again
    wrong = dataclasses.replace(cfg, n_kv_heads=4)
    with pytest.raises(UserError, match=r"init_from: .*another architecture.*n_kv_heads"):
        resolve_init_from(f"hf:{folder}", tmp_path / "w", wrong)
    with pytest.raises(UserError, match="init_from: 'x' must be hf:PATH"):
        resolve_init_from("x", tmp_path, cfg)
    with pytest.raises(UserError, match="could not fetch 'org/name'"):
        resolve_init_from("hf:org/name", tmp_path, cfg)  # offline here


def _edit_config(folder, tmp_path, **changes):
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    cfg = json.loads((out / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
            r"architectures: \['LlamaForCausalLM'\]",
        ),
        ({"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe"}, "QK-norm width"),
        ({"n_group": 2, "topk_group": 1}, "n_group: 2: expert groups"),
        ({"attention_bias": True}, "attention_bias: true"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "partial_rotary_factor: 0.5"),
        (
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 5e5,
                    "factor": 2.0,
                    "partial_rotary_factor": 1.0,
                }
            },
            "rope_type: 'yarn'",
        ),
        ({"moe_intermediate_size": 32}, r"weights do not match config.json .*differ"),
        ({"num_hidden_layers": 5}, r"missing, e.g. \['model.layers.4"),
    ],
)
def test_import_refuses_what_does_not_map(tiny_export, tmp_path, changes, message):
    from mobilemoe.hf import import_hf

    _, folder = tiny_export
    with pytest.raises(UserError, match=message):
        import_hf(_edit_config(folder, tmp_path, **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_what_does_not_map(tmp_path, tokenizer_file):
    import dataclasses

    from mobilemoe.data.tokenizer import train_tokenizer
    from mobilemoe.hf import HFMappingError, export_hf
    from mobilemoe.hf.mapping import architecture_for

    moe = model_config("tiny")
    assert moe.moe is not None
    with pytest.raises(HFMappingError, match="model.moe.shared_hidden: .* not a multiple"):
        architecture_for(dataclasses.replace(moe, moe=dataclasses.replace(moe.moe, shared_hidden=100)))
    with pytest.raises(HFMappingError, match="model.sliding_window"):
        architecture_for(dataclasses.replace(moe, sliding_window=16, global_every=4))
    with pytest.raises(HFMappingError, match="model.qk_norm"):
        architecture_for(dataclasses.replace(model_config("dense"), qk_norm=False))
    # a tokenizer without our special tokens is refused, naming the tokens it lacks
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_file, "dense")
    train_tokenizer(["some text to learn"] * 50, 300).save(str(tmp_path / "plain.json"))
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.add_special_tokens(["<|pad|>", "<|bos|>", "<|eos|>"])
    tok.save(str(ckpt / "tokenizer.json"))
    from mobilemoe.checkpoint import write_manifest

    write_manifest(ckpt)
    with pytest.raises(
        UserError, match=r"lacks our special tokens .*<\|user\|>, <\|assistant\|>, <\|eot\|>;"
    ):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("preset", ["mobilemoe-s", "mobilemoe-l", "dense-mobilellm-pro", "olmoe-1b-7b"])
def test_preset_param_counts_agree_with_transformers(preset):
    """Paper shapes: the transformers model of each preset has our parameter count."""
    import yaml

    from mobilemoe.config import preset_path
    from mobilemoe.config.base import build
    from mobilemoe.config.model import ModelConfig
    from mobilemoe.hf import hf_param_count
    from mobilemoe.model.accounting import account

    cfg = build(ModelConfig, yaml.safe_load(preset_path(preset).read_text())["model"], "model")
    assert hf_param_count(cfg) == account(cfg).total_params


def test_hf_config_command_prints_the_paper_shapes(capsys):
    from mobilemoe.cli import main

    assert main(["hf", "config", "--preset", "mobilemoe-s"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architectures"] == ["Glm4MoeForCausalLM"]
    assert (
        out["rope_parameters"]["rope_type"] == "llama3"
        and out["rope_parameters"]["partial_rotary_factor"] == 1.0
    )
    assert out["first_k_dense_replace"] == 0 and out["n_group"] == 1 and out["head_dim"] == 64
    assert (out["n_routed_experts"], out["n_shared_experts"], out["moe_intermediate_size"]) == (60, 4, 384)
    counts = out["_mobilemoe"]
    assert counts["transformers_param_count"] == counts["arch_total_params"]


def test_a_stage_starts_from_init_from(tiny_export, tmp_path):
    """``sft.init_from: hf:PATH``: the stage's input checkpoint is the imported folder, of
    the configured model (what the trainer's ``load_checkpoint(expect_model=...)`` checks)."""
    from mobilemoe.checkpoint import load_checkpoint
    from mobilemoe.config import ConfigError, load_preset
    from mobilemoe.train.inputs import check_init_checkpoint

    ckpt, folder = tiny_export
    params = load_preset("tiny", [f"sft.init_from=hf:{folder}"])
    init = check_init_checkpoint("sft", "ignored/upstream", params, tmp_path / "work")
    assert init == tmp_path / "work" / "init_from" / "checkpoint"
    model, _ = load_checkpoint(init, expect_model=params.model)
    ours, _ = load_checkpoint(ckpt)
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), ours.state_dict().values()))
    with pytest.raises(ConfigError, match="sft.init_from: 'runs/x' must be hf:PATH"):
        load_preset("tiny", ["sft.init_from=runs/x"])


def test_model_card_has_data_licences_benchmarks_and_lineage(tiny_export, tmp_path, capsys):
    from types import SimpleNamespace

    from mobilemoe.hf import write_card
    from mobilemoe.hf.card import data_section

    _, folder = tiny_export
    shards = tmp_path / "data" / "shards" / "sft"
    shards.mkdir(parents=True)
    meta = {
        "licences": ["BSD-3-Clause"],
        "source_mix": {"train": {"chatterbot": {"docs": 3, "tokens": 1234}}},
    }
    (shards / "meta.json").write_text(json.dumps(meta))
    sources = [{"name": "chatterbot", "kind": "chatterbot", "use": "sft", "licence": "BSD-3-Clause"}]
    data = data_section(
        SimpleNamespace(data=SimpleNamespace(sources=sources)), tmp_path / "data", {"data/x": "md5"}
    )
    results = {"tasks": {"arc_easy": {"metric": "acc", "score": 0.3, "stderr": 0.06, "n": 50}}, "limit": 50}
    card = write_card(folder, data=data, results=results, lineage={"qat_run_id": "r1"}).read_text()
    assert "| chatterbot | chatterbot | sft | BSD-3-Clause |" in card and "chatterbot 1,234 tokens" in card
    assert "| arc_easy | acc | 0.3000 | 0.0600 | 50 |" in card and "`data/x`: `md5`" in card
    assert "- qat_run_id: `r1`" in card

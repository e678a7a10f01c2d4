"""What transformers computes from an exported folder is what our model computes: logits
on real text (fp32, 1e-4), greedy generation, the chat template's ids, one BOS."""

from __future__ import annotations

import json

import pytest
import torch
from hf_helpers import VARIANTS, real_batch

from mobilemoe.hf.mapping import GLM4_MOE, QWEN3, QWEN3_MOE

ARCH = {"tiny": GLM4_MOE, "softmax": QWEN3_MOE, "dense": QWEN3, "dense_window": QWEN3}
TOL = 1e-4


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def _ours(ckpt):
    from mobilemoe.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_logits_and_greedy_tokens_equal_ours(hf_variant, tokenizer_file, variant):
    from mobilemoe.generate import generate_ids

    ckpt, folder = hf_variant(variant)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [ARCH[variant]] and "auto_map" not in config  # native, no custom code
    hf, ours = _load(folder), _ours(ckpt)
    assert hf.dtype == torch.float32
    x = real_batch(tokenizer_file)
    with torch.no_grad():
        want, got = ours(x), hf(x).logits
    diff = (want - got).abs().max().item()
    print(f"{variant}: max |logit diff| {diff:.2e}")
    assert diff < TOL
    assert len(set(want.argmax(-1).flatten().tolist())) > 5  # context-dependent choices, not one token
    for row in x[:2]:
        prompt = row[:24].tolist()
        new = generate_ids(ours, prompt, 16, stop_ids=())
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
        assert out[0, len(prompt) :].tolist() == new


def test_sliding_window_matters_in_the_comparison(hf_variant, tokenizer_file):
    """The window variant's parity is not vacuous: without the window the logits differ."""
    import dataclasses

    from mobilemoe.model import build_model

    ckpt, _ = hf_variant("dense_window")
    ours = _ours(ckpt)
    full = build_model(dataclasses.replace(ours.cfg, sliding_window=None)).eval()
    full.load_state_dict(ours.state_dict())
    x = real_batch(tokenizer_file)
    with torch.no_grad():
        assert (ours(x) - full(x)).abs().max().item() > 1e-2


def test_chat_template_gives_our_sft_ids(tiny_export):
    from transformers import AutoTokenizer

    from mobilemoe.data.tokenizer import encode_chat, load_tokenizer
    from mobilemoe.generate import encode_prompt

    ckpt, folder = tiny_export
    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    ours = load_tokenizer(ckpt / "tokenizer.json")
    for user, reply in [("What is a list?", "  A mutable sequence.\n"), ("Hi!\n", "Hello, how are you?")]:
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        ids = hf_tok.apply_chat_template(chat, tokenize=True, return_dict=False)
        assert ids == encode_chat(ours, user, reply)[0]
        prompt = hf_tok.apply_chat_template(
            chat[:1], tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert prompt == encode_prompt(ours, user, chat=True)
    rendered = hf_tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=False
    )
    assert rendered == "<|bos|><|user|>Hi<|eot|><|assistant|>Yo<|eot|><|eos|>"
    assert (folder / "chat_template.jinja").is_file()  # transformers 5 saves it as its own file


def test_autotokenizer_adds_exactly_one_bos(tiny_export):
    from transformers import AutoTokenizer

    from mobilemoe.tokens import BOS_ID

    ckpt, folder = tiny_export
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("The river runs past the mill.")["input_ids"]
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
    assert tok("x", add_special_tokens=False)["input_ids"][0] != BOS_ID
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    # the checkpoint's (training) tokenizer keeps no post-processor: the data code adds BOS
    assert json.loads((ckpt / "tokenizer.json").read_text())["post_processor"] is None
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 5] and gen["bos_token_id"] == BOS_ID


def test_executorch_tokenizer_adds_exactly_one_bos(tiny_export, tmp_path):
    """ExecuTorch's C++ HF tokenizer (the one ``TextLLMRunner`` runs): with the shipped
    post-processor, ``num_bos=1`` gives one BOS, not two; the training file gives none."""
    from pytorch_tokenizers import CppHFTokenizer

    from mobilemoe.hf.tokenizer import with_bos
    from mobilemoe.tokens import BOS_ID

    ckpt, _ = tiny_export
    shipped = tmp_path / "tokenizer.json"
    shipped.write_text(with_bos((ckpt / "tokenizer.json").read_text()))
    text = "The river runs past the mill."
    for path, bos_when_asked in [(shipped, [BOS_ID]), (ckpt / "tokenizer.json", [])]:
        tok = CppHFTokenizer()
        tok.load(str(path))
        plain, asked = tok.encode(text, 0, 0), tok.encode(text, 1, 0)
        assert BOS_ID not in plain
        assert asked == bos_when_asked + plain

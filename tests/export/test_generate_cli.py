"""Generation: the eager KV-cache decode (greedy, temperature, top-p, seed, stop ids), the
``mobilemoe generate`` command for checkpoints and programs, and the chat template."""

from __future__ import annotations

import pytest
import torch

from mobilemoe.cli import main
from mobilemoe.errors import UserError
from mobilemoe.export import PteModel
from mobilemoe.generate import Sampler, decode_new, encode_prompt, generate_ids
from mobilemoe.quant import load_for_inference
from mobilemoe.tokens import BOS_ID, END_OF_TURN_ID, chat_prompt


@pytest.fixture(scope="module")
def sft(sft_checkpoint):
    from mobilemoe.data.tokenizer import load_tokenizer

    model, _ = load_for_inference(sft_checkpoint)
    return model, load_tokenizer(sft_checkpoint / "tokenizer.json")


def test_greedy_kv_cache_decode_equals_recomputing_the_whole_sequence(sft):
    model, tok = sft
    ids = encode_prompt(tok, "The river runs past the old mill", chat=False)
    assert ids[0] == BOS_ID
    new = generate_ids(model, ids, 12, stop_ids=())
    assert len(new) == 12 and len(set(new)) > 2
    with torch.no_grad():  # no cache: each next token is the argmax of a full forward
        seq = list(ids)
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert seq[len(ids) :] == new


def test_stop_ids_max_tokens_and_context(sft):
    model, tok = sft
    ids = encode_prompt(tok, "A function is", chat=False)
    first = generate_ids(model, ids, 5, stop_ids=())[0]
    assert generate_ids(model, ids, 5, stop_ids=[first]) == [first]  # stop token included, then stop
    assert len(generate_ids(model, ids, 3, stop_ids=())) == 3
    ctx = model.cfg.max_seq_len
    assert len(generate_ids(model, ids, 1000, stop_ids=())) == ctx - len(ids)  # context is the limit
    with pytest.raises(UserError, match="context"):
        generate_ids(model, list(range(6, 6 + ctx)), 1)


def test_sampling_is_seeded_and_top_p_narrows_it(sft):
    model, tok = sft
    ids = encode_prompt(tok, "What is", chat=False)
    a = generate_ids(model, ids, 16, temperature=1.5, seed=1, stop_ids=())
    assert a == generate_ids(model, ids, 16, temperature=1.5, seed=1, stop_ids=())
    assert a != generate_ids(model, ids, 16, temperature=1.5, seed=2, stop_ids=())
    greedy = generate_ids(model, ids, 16, stop_ids=())
    assert generate_ids(model, ids, 16, temperature=1.5, top_p=1e-6, seed=3, stop_ids=()) == greedy
    logits = torch.tensor([0.0, 10.0, 9.0, -5.0])
    picks = {Sampler(1.0, top_p=0.99, seed=s)(logits) for s in range(40)}
    assert picks == {1, 2}  # token 3 (and 0) are outside the nucleus
    with pytest.raises(UserError, match="top_p"):
        Sampler(1.0, top_p=0.0)
    with pytest.raises(UserError, match="temperature"):
        Sampler(-1.0)


def test_decode_drops_the_stop_token(sft):
    _, tok = sft
    ids = tok.encode("hello world", add_special_tokens=False).ids
    assert decode_new(tok, ids + [END_OF_TURN_ID]) == "hello world"


def _printed(capsys) -> str:
    """The generated text: stdout less the one newline print adds (the text itself may
    end in newlines)."""
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


def test_generate_command_with_a_checkpoint_uses_the_chat_template(qat_checkpoint, capsys):
    from mobilemoe.data.tokenizer import load_tokenizer

    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(qat_checkpoint),
                "--prompt",
                "What is a list?",
                "--max-new-tokens",
                "12",
            ]
        )
        == 0
    )
    printed = _printed(capsys)
    model, _ = load_for_inference(qat_checkpoint)  # the converted INT4 model
    tok = load_tokenizer(qat_checkpoint / "tokenizer.json")
    ids = [BOS_ID, *tok.encode(chat_prompt("What is a list?"), add_special_tokens=False).ids]
    assert printed == decode_new(tok, generate_ids(model, ids, 12)) and printed
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(qat_checkpoint),
                "--prompt",
                "What is a list?",
                "--max-new-tokens",
                "12",
                "--no-chat",
                "--fp32",
            ]
        )
        == 0
    )
    fp, _ = load_for_inference(qat_checkpoint, quantized=False)
    plain = encode_prompt(tok, "What is a list?", chat=False)
    assert _printed(capsys) == decode_new(tok, generate_ids(fp, plain, 12))


def test_generate_command_with_a_program(int4_export, capsys):
    out, _, _ = int4_export
    assert (
        main(
            [
                "generate",
                "--pte",
                str(out / "model.pte"),
                "--prompt",
                "What is a list?",
                "--max-new-tokens",
                "12",
            ]
        )
        == 0
    )
    printed = _printed(capsys)
    pte = PteModel(out / "model.pte")
    assert pte.use_chat_template  # exported from a qat checkpoint
    assert printed == pte.generate_text("What is a list?", 12) and printed


def test_generate_command_bad_input(tmp_path, capsys):
    assert main(["generate", "--pte", str(tmp_path / "missing.pte"), "--prompt", "x"]) == 2
    assert "missing.pte: program not found" in capsys.readouterr().err
    (tmp_path / "junk.pte").write_bytes(b"not a program")
    assert main(["generate", "--pte", str(tmp_path / "junk.pte"), "--prompt", "x"]) == 2
    assert "junk.pte: not an ExecuTorch program" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "x"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err

"""The BPE tokenizer: specials at ids 0..5, vocab size from params, identical ids through
``tokenizers`` and ExecuTorch's ``pytorch_tokenizers``, response-only SFT loss mask."""

from __future__ import annotations

import pytest

from mobilemoe.data.tokenizer import encode_chat, encode_document, load_tokenizer, train_tokenizer
from mobilemoe.errors import UserError
from mobilemoe.tokens import (
    ASSISTANT_ID,
    BOS_ID,
    END_OF_TURN_ID,
    EOS_ID,
    SPECIAL_TOKENS,
    USER_ID,
    chat_prompt,
)

SAMPLES = [
    "Hello world, this is a test.",
    "def f(x):\n    return x ** 2  # square",
    "Unicode: café, naïve, 東京, emoji 🙂",
    f"{chat_prompt('What is AI?')}It is a field.<|eot|>",
]


def test_specials_and_vocab(tokenizer_file):
    tok = load_tokenizer(tokenizer_file, 512)
    assert tok.get_vocab_size() == 512
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(6))
    for text in SAMPLES[:3]:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text  # byte-level: lossless


def test_same_ids_through_executorch_tokenizers(tokenizer_file):
    import pytorch_tokenizers as pt
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer_file))
    py = pt.get_tokenizer(str(tokenizer_file))
    cpp = pt.CppHFTokenizer()
    cpp.load(str(tokenizer_file))
    assert cpp.vocab_size() == 512 and cpp.bos_tok() == BOS_ID and cpp.eos_tok() == EOS_ID
    for text in SAMPLES:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert py.encode(text, bos=False, eos=False) == ids
        assert cpp.encode(text, 0, 0) == ids
    assert USER_ID in hf.encode(SAMPLES[3], add_special_tokens=False).ids  # template tokens stay atomic


def test_encode_chat_masks_only_the_response(tokenizer_file):
    tok = load_tokenizer(tokenizer_file)
    ids, mask = encode_chat(tok, "What is AI?", "A field of computer science.")
    assert len(ids) == len(mask)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and ids[1] == USER_ID
    a = ids.index(ASSISTANT_ID)
    assert sum(mask[: a + 1]) == 0  # bos, prompt, eot of the user turn, assistant tag: no loss
    assert all(mask[a + 1 :])  # response, its end-of-turn and the final EOS carry loss
    assert ids[-2] == END_OF_TURN_ID
    assert tok.decode(ids[a + 1 : -2]).strip() == "A field of computer science."
    doc = encode_document(tok, "plain text")
    assert doc[0] == BOS_ID and doc[-1] == EOS_ID


def test_too_small_vocab_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="model.vocab_size"):
        train_tokenizer(["some text"], 200)
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_vocab_mismatch_is_reported(tokenizer_file):
    with pytest.raises(UserError, match="model.vocab_size"):
        load_tokenizer(tokenizer_file, 256)

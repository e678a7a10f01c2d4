"""The tokenizer as models ship it: one BOS added on encode, and our chat template.

    text = with_bos(Path("tokenizer.json").read_text())     # + TemplateProcessing(<|bos|> $A)
    text = without_post_processor(text)                     # back to the training file, byte for byte
    save_hf_tokenizer(Path("ckpt/tokenizer.json"), Path("hf"), model_max_length=256)

The data tokenizer has no post-processor: the data code writes ``<|bos|>`` itself, and
every encode in this project passes ``add_special_tokens=False``. Tokenizers that ship
with a model (the folder beside the ``.pte``, the Hugging Face folder) get the usual
``TemplateProcessing`` post-processor, so a plain prompt gets exactly one BOS from
``AutoTokenizer`` (``add_special_tokens`` defaults to true there) and from ExecuTorch's
``TextLLMRunner`` (its C++ tokenizer runs the post-processor when ``num_bos`` > 0, and
adds nothing without one).

The chat template renders the SFT format of ``mobilemoe.tokens`` exactly:
``<|bos|><|user|>{user}<|eot|><|assistant|>{assistant}<|eot|>`` (texts stripped; a
system message joins the next user turn followed by a blank line, as our lm-eval model
does), ``<|eos|>`` after a final assistant turn (what SFT trains), ``<|assistant|>`` for
a generation prompt. ``apply_chat_template`` tokenizes without special tokens, so the
template writes the BOS itself.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..tokens import ASSISTANT, BOS, BOS_ID, END_OF_TURN, EOS, PAD, SPECIAL_TOKENS, USER

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = (message['content'] | trim) ~ '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}"
    f"{{{{- '{USER}' ~ ns.system ~ (message['content'] | trim) ~ '{END_OF_TURN}' -}}}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    f"{{{{- '{ASSISTANT}' ~ (message['content'] | trim) ~ '{END_OF_TURN}' -}}}}"
    "{%- if loop.last and not add_generation_prompt -%}{{- eos_token -}}{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('unknown role: ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    f"{{%- if add_generation_prompt -%}}{{{{- '{ASSISTANT}' -}}}}{{%- endif -%}}"
)


def missing_special_tokens(tok) -> list[str]:
    """Our special tokens that ``tok`` (a ``tokenizers.Tokenizer``) lacks at their ids."""
    return [name for i, name in enumerate(SPECIAL_TOKENS) if tok.token_to_id(name) != i]


def check_special_tokens(tok, path) -> None:
    missing = missing_special_tokens(tok)
    if missing:
        raise UserError(
            f"{path}: the tokenizer lacks our special tokens at their ids ({', '.join(missing)}; "
            f"expected {', '.join(f'{n}={i}' for i, n in enumerate(SPECIAL_TOKENS))}); export "
            "the checkpoint with the tokenizer it was trained with"
        )


def with_bos(tokenizer_json: str) -> str:
    """``tokenizer.json`` text with a post-processor that adds one ``<|bos|>`` per sequence."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A:0",
        pair=f"{BOS} $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, BOS_ID)],
    )
    return tok.to_str(pretty=True)


def without_post_processor(tokenizer_json: str) -> str:
    """The inverse of :func:`with_bos` (the training tokenizer, byte for byte)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.post_processor = None
    tok.no_padding()
    tok.no_truncation()
    return tok.to_str(pretty=True)


def save_hf_tokenizer(tokenizer_path: Path, out_dir: Path, model_max_length: int) -> None:
    """``tokenizer.json`` (with BOS), ``tokenizer_config.json`` and ``chat_template.jinja``
    in ``out_dir``, written by transformers itself so ``AutoTokenizer`` reads them back."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    text = Path(tokenizer_path).read_text()
    check_special_tokens(Tokenizer.from_str(text), tokenizer_path)
    tok = Tokenizer.from_str(with_bos(text))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[USER, ASSISTANT, END_OF_TURN],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(str(out_dir))

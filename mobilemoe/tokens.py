"""Special tokens and the chat template: one definition for data, training, export, eval.

The tokenizer (``mobilemoe.data``) reserves these as its first ids, in this order, so
their ids are the same for every vocabulary size. SFT formats each pair with
:func:`format_chat`; generation with SFT/QAT models prompts with :func:`chat_prompt`
and stops at ``END_OF_TURN`` or ``EOS``.
"""

from __future__ import annotations

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|eot|>"

SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, END_OF_TURN]  # ids 0..5
PAD_ID, BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID, END_OF_TURN_ID = range(len(SPECIAL_TOKENS))
STOP_TOKENS = [EOS, END_OF_TURN]  # generation of chat models ends at either


def chat_prompt(user_text: str) -> str:
    """The prompt part of one chat turn; the model continues with the response."""
    return f"{USER}{user_text.strip()}{END_OF_TURN}{ASSISTANT}"


def format_chat(user_text: str, response: str) -> tuple[str, str]:
    """(prompt, completion) of one SFT example; only the completion carries loss."""
    return chat_prompt(user_text), f"{response.strip()}{END_OF_TURN}"

"""Prompt formats: how a user's request becomes the text of the user turn, for prep and generation alike.

`prep` renders every Alpaca record's user turn with `user_turn`, records the format in
the manifest (`prompt_format`) and in the saved tokenizer (`save_prompt_format`), and
`train.generate` / `train.report` render a question with the same function, so a
checkpoint is asked questions the way it was trained:

    alpaca  the source article's preamble: "Below is an instruction ...\\n" + instruction
            (+ ". Here are the inputs: " + input)
    none    the text unchanged (chat-shaped data: the user wrote the turn)

>>> user_turn("none", "Hi")
'Hi'
>>> user_turn("alpaca", "Translate", "bonjour").removeprefix(ALPACA_PREAMBLE)
'Translate. Here are the inputs: bonjour'
"""
from __future__ import annotations

from typing import Literal, get_args

PromptFormat = Literal["alpaca", "none"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)
# A key of tokenizer_config.json: `save_pretrained` keeps it, so the format travels
# wherever the tokenizer is saved (shard set, every checkpoint) without the trainer knowing.
PROMPT_FORMAT_KEY = "sftpack_prompt_format"

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n"
)


def user_turn(prompt_format: str, instruction: str, input_text: str = "") -> str:
    """The user turn's text for `instruction` (and an optional `input_text`) in `prompt_format`."""
    if prompt_format == "none":
        return instruction if input_text == "" else f"{instruction}\n\n{input_text}"
    if prompt_format != "alpaca":
        raise ValueError(f"unknown prompt format {prompt_format!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    # The source article tests `input != ""`, not `.strip()`: a whitespace-only input is
    # still appended, so the prompts (and the token counts) match the source article's.
    if input_text != "":
        return ALPACA_PREAMBLE + f"{instruction}. Here are the inputs: {input_text}"
    return ALPACA_PREAMBLE + instruction


def set_prompt_format(tokenizer, prompt_format: str) -> None:
    """Record the format in the tokenizer's own config (prep does, before saving it with the shards)."""
    tokenizer.init_kwargs[PROMPT_FORMAT_KEY] = prompt_format


def prompt_format_of(tokenizer) -> str:
    """The format a tokenizer's shards were built with; "none" when it says nothing
    (shards made before formats were recorded, or a model from elsewhere)."""
    value = tokenizer.init_kwargs.get(PROMPT_FORMAT_KEY, "none")
    if value not in PROMPT_FORMATS:
        raise ValueError(f"tokenizer_config.json: {PROMPT_FORMAT_KEY} {value!r} is not one of {', '.join(PROMPT_FORMATS)}")
    return value

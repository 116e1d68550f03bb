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

import contextlib
import datetime
import json
from typing import Literal, get_args

PromptFormat = Literal["alpaca", "none"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)
# A key of tokenizer_config.json: `save_pretrained` keeps it, so the format travels
# wherever the tokenizer is saved (shard set, every checkpoint) without the trainer knowing.
PROMPT_FORMAT_KEY = "sftpack_prompt_format"
# The chat template's options (--chat-template-kwargs) and the date its strftime_now gives (--template-date),
# kept the same way so that generation renders prompts exactly as prep rendered them.
TEMPLATE_KWARGS_KEY = "sftpack_chat_template_kwargs"
TEMPLATE_DATE_KEY = "sftpack_template_date"

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


def set_template_options(tokenizer, kwargs: dict, date: str | None) -> None:
    """Record the chat template's options and fixed date in the tokenizer's own config."""
    tokenizer.init_kwargs[TEMPLATE_KWARGS_KEY] = dict(kwargs)
    tokenizer.init_kwargs[TEMPLATE_DATE_KEY] = date


def template_options(tokenizer) -> tuple[dict, str | None]:
    """(kwargs, date) recorded by prep; ({}, None) for a tokenizer from elsewhere."""
    kwargs = tokenizer.init_kwargs.get(TEMPLATE_KWARGS_KEY) or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"tokenizer_config.json: {TEMPLATE_KWARGS_KEY} is not a JSON object: {json.dumps(kwargs)}")
    return kwargs, tokenizer.init_kwargs.get(TEMPLATE_DATE_KEY)


@contextlib.contextmanager
def fixed_date(date: str | None):
    """While open, a chat template's `strftime_now` gives `date` (YYYY-MM-DD) instead of today.

    transformers gives templates `strftime_now` as a closure over `datetime.now()` and
    strips callables from template variables, so no argument can replace it: the module's
    `datetime` is swapped for the duration (prep renders in one thread).
    """
    if date is None:
        yield
        return
    from transformers.utils import chat_template_utils

    day = datetime.date.fromisoformat(date)

    class _Fixed(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(day.year, day.month, day.day, tzinfo=tz)

    saved = chat_template_utils.datetime
    chat_template_utils.datetime = _Fixed
    try:
        yield
    finally:
        chat_template_utils.datetime = saved


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False, **extra) -> str:
    """The tokenizer's chat template over `messages` with the options prep recorded (text, not ids):
    `--chat-template-kwargs` and the `--template-date` its strftime_now gives (tests/test_template_options.py)."""
    kwargs, date = template_options(tokenizer)
    options = {**kwargs, **extra}
    with fixed_date(date):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 **options)
        except TypeError:
            if "tools" in options or "tools" not in (tokenizer.chat_template or ""):
                raise
        # Tool-use templates (Hermes, Command-R's tool_use) loop over `tools` unguarded: no tools is an empty list.
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             tools=[], **options)

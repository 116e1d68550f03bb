"""Tokenizer, chat template and loss masks.

A conversation becomes `input_ids` plus a per-token `loss_mask`, built by construction
from the model's own chat template. For each conversation shape (the roles, and which
replies carry reasoning) the template is rendered once over placeholder contents: the
full conversation, and the generation prompt before each assistant turn. That splits
the render into the template's special tokens (every added token marked special, such
as `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `[/INST]`: not only those of the tokenizer's
special-tokens map), its fixed text, and the message contents:

    <|im_start|> "user\\n{prompt}" <|im_end|> "\\n" <|im_start|> "assistant\\n" | "<think>..</think>\\n\\n{reply}" <|im_end|> | "\\n"
                  mask 0                                          mask 0          mask 1                       mask 1      mask 0

Supervised: each assistant turn from where its generation prompt ends (so text the
template puts between the prompt and the reply, such as Qwen3's think block or the
space after Mistral's `[/INST]`, is learned) through its reply and up to and including
the first special token after it, the template's end of turn, whatever the eos is.
Nothing of a user, system or tool turn, nor of the generation prompt. Each sample is
then tokenized segment by segment, a segment ending at every special token and at every
prompt/reply boundary, so a prompt's ids are what the tokenizer gives the prompt alone.
Message contents are tokenized with special-token parsing off: a user who types
`<|im_start|>` gets plain text, not a forged turn.

Templates that are not turn-by-turn prefixes are accepted, with masks from the full
render: a template that moves the system message or drops earlier reasoning trains on a
prompt that generation at that turn would not see, which is recorded per shape
(`mismatches`) and said in one line. A message the template drops is counted per role
(`dropped`) and said in one line. Templates that strip contents (`| trim`, `.strip('\\n')`)
are detected and the contents stripped the same way. Refused, in one line each: a
template that cannot render the conversation, that renders a reply twice, or that closes
a reply with no special token (nothing would tell the model, or generation, where a
reply ends; `--loss-on all` supervises everything instead).
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from prep.encoders import TextEncoder
from prep.records import ASSISTANT, SYSTEM, TOOL, USER
from sftcli import UserError
from shards.prompts import render_chat

GPT2_DIR = Path(__file__).parent / "assets" / "gpt2"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# The ChatML template that TRL's setup_chat_format installs.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Which tokens carry a loss: each assistant reply and its end-of-turn token, or every token (the source article's code).
LossOn = Literal["assistant", "all"]
# What happens to a system message: rendered as the template renders it, prepended to the first user turn, left out,
# or a refusal where the template would drop or move it.
SystemMessage = Literal["keep", "fold", "drop", "error"]
CHECKS_PER_SHAPE = 4
CONTENT, REASONING = "c", "r"  # the two supervised fields a message has: its content and its reasoning
_TOOLS = "\x00tools"  # the shape's last entry, when the conversation has tools
# A placeholder, as written or as a template's `tojson` escapes it (Llama 3.1's tool results); NUL never
# occurs in validated records.
_MARK = re.compile("(?:\x00|\\\\u0000)(\\d+)([cr])(?:\x00|\\\\u0000)")
# Whitespace put around every placeholder in a second render: what the template leaves of it tells how it strips.
_PAD_LEFT, _PAD_RIGHT = "\n\t\n", "\n \n"
_LEFT = {"none": _PAD_LEFT, "nl": _PAD_LEFT.lstrip("\n"), "ws": ""}
_RIGHT = {"none": _PAD_RIGHT, "nl": _PAD_RIGHT.rstrip("\n"), "ws": ""}


class ChatFormatError(UserError):
    """The chat template cannot give exact loss-mask boundaries."""


def load_tokenizer(name: str):
    """`gpt2` is the vendored GPT-2 BPE (no network); anything else goes to AutoTokenizer.

    >>> load_tokenizer("gpt2")("Hello world")["input_ids"]
    [15496, 995]
    """
    from transformers import AutoTokenizer, GPT2Tokenizer

    if name == "gpt2":
        return GPT2Tokenizer.from_pretrained(str(GPT2_DIR), model_max_length=1024)
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChatFormatError(
            f"cannot load tokenizer {name!r} ({first}). Use --tokenizer gpt2 (vendored, offline), "
            "a local tokenizer folder, or a hub id when the hub is reachable."
        ) from None


def ensure_chat_format(tokenizer):
    """Give a tokenizer without a chat template the ChatML format, as setup_chat_format does,
    except that pad stays distinct from eos (pad == eos masks every `<|im_end|>` out of the
    labels in common collators, and the model never learns to stop).

    >>> tok = ensure_chat_format(load_tokenizer("gpt2"))
    >>> tok.eos_token, tok.bos_token, tok.pad_token, len(tok)
    ('<|im_end|>', '<|im_start|>', '<|endoftext|>', 50259)
    """
    if tokenizer.chat_template is None:
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
        old_eos = tokenizer.eos_token
        tokenizer.eos_token, tokenizer.bos_token = IM_END, IM_START
        tokenizer.chat_template = CHATML_TEMPLATE
        if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
            tokenizer.pad_token = old_eos  # GPT-2's <|endoftext|>: a real token, unused by ChatML
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def special_tokens(tokenizer) -> list[str]:
    """Every token the template may use as a control token: the special-tokens map and every
    added token marked special (Gemma's `<end_of_turn>`, Phi-3's `<|end|>`, Llama 3's header
    tokens are outside the map), longest first so a regex prefers `<|im_end|>` to `<|im`."""
    tokens = {t for t in tokenizer.all_special_tokens if t}
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content}
    return sorted(tokens, key=len, reverse=True)


def message_fields(message: tuple) -> tuple[str, str, str | None]:
    """(role, content, reasoning or None) of a conversation's message: (role, content[, reasoning[, extras]])."""
    return message[0], message[1], message[2] if len(message) > 2 else None


def message_extras(message: tuple) -> dict:
    """A message's other fields (an assistant's `tool_calls`; a tool turn's `tool_call_id`, `name`)."""
    return json.loads(message[3]) if len(message) > 3 and message[3] else {}


def _strip(text: str, left: str, right: str) -> str:
    """`text` stripped on each side as the template strips it: none, "nl" (newlines) or "ws" (whitespace)."""
    text = text.lstrip() if left == "ws" else text.lstrip("\n") if left == "nl" else text
    return text.rstrip() if right == "ws" else text.rstrip("\n") if right == "nl" else text


@dataclass
class _Plan:
    """One conversation shape: segments of fixed text, contents and special ids, with mask bits."""

    segments: list  # each: (kind, value, supervised); kind "special" (id) | "text" (list of str | (i, field, l, r))
    const_ids: dict  # segment index -> token ids of segments without contents
    end_of_turn: int | None  # the special token that closes the assistant turns
    continued: list[bool]  # per segment: text that continues the text before it (no SentencePiece "▁" start)
    dropped: tuple[str, ...] = ()  # roles of the messages the template does not render ("reasoning" for reasoning)
    first_mismatch: int | None = None  # the first assistant turn whose training prompt generation would not see
    matches: dict = field(default_factory=dict)  # assistant turn -> whether its prompt is the generation prompt
    closers: list = field(default_factory=list)  # the special ids that closed its replies
    appended: int | None = None  # the special id added after a last reply the template leaves open

    @property
    def supervised(self) -> list[bool]:
        return [seg[2] for seg in self.segments]

    def text(self, conversation: tuple, tokens: dict[int, str]) -> str:
        """The render this plan gives `conversation` (special ids spelled by `tokens`)."""
        return "".join(tokens[value] if kind == "special" else _fill(value, conversation)
                       for kind, value, _ in self.segments)


def _fill(parts: list, conversation: tuple) -> str:
    """A text segment with the conversation's contents in place of its placeholders."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        else:
            index, which, left, right, escaped = part
            _, content, reasoning = message_fields(conversation[index])
            text = _strip(content if which == CONTENT else reasoning, left, right)
            out.append(json.dumps(text, ensure_ascii=False)[1:-1] if escaped else text)
    return "".join(out)


class ConversationEncoder:
    """Turn conversations (tuples of (role, content[, reasoning])) into ids and loss masks, in batches.

    `dropped` counts the messages the template left out, by role; `mismatches` maps each
    shape whose training prompt differs from generation's to [first such turn, conversations].
    """

    def __init__(self, tokenizer, loss_on: str = "assistant", encoder: str = "auto", system_message: str = "keep"):
        if loss_on not in get_args(LossOn):
            raise ValueError(f"loss_on must be one of {get_args(LossOn)}, got {loss_on!r}")
        if system_message not in get_args(SystemMessage):
            raise ValueError(f"system_message must be one of {get_args(SystemMessage)}, got {system_message!r}")
        self.tokenizer, self.loss_on, self.system_message = tokenizer, loss_on, system_message
        self.eos_id = tokenizer.eos_token_id
        specials = special_tokens(tokenizer)
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self._spelling = {tokenizer.convert_tokens_to_ids(t): t for t in specials}
        # Texts are encoded in parallel batches with special-token parsing off: template
        # specials are inserted as ids by the plan (prep.encoders picks tiktoken or tokenizers).
        self.text = TextEncoder(tokenizer, encoder)
        self._backend = tokenizer.backend_tokenizer  # the prompt check tokenizes as generation does
        self._plans: dict[tuple, _Plan] = {}
        self._checked: collections.Counter = collections.Counter()  # conversations checked per shape
        self.dropped: collections.Counter = collections.Counter()
        self.closed: collections.Counter = collections.Counter()  # token added after an open last reply -> conversations
        self.mismatches: dict[tuple, list[int]] = {}
        self._closers: set[int] = set()  # what closes a plain reply: where a reply with tool calls closes too
        # Where generation must stop: the end of an assistant turn, from the template itself.
        plain = self.plan(((USER, False, None, False), (ASSISTANT, False, None, False)))
        self.end_of_turn_id, self._closers = plain.end_of_turn, set(plain.closers)
        if self.end_of_turn_id is None:
            self.end_of_turn_id = self.eos_id

    def _encode_plain(self, texts: list[str], continued: list[bool] | None = None) -> list[list[int]]:
        return self.text.encode(texts, continued)

    # ----------------------------------------------------------------- rendering

    def _render(self, shape: tuple, upto: int | None = None, pad: bool = False) -> str:
        """The template over placeholders: the whole conversation, or the generation prompt before turn `upto`."""
        left, right = (_PAD_LEFT, _PAD_RIGHT) if pad else ("", "")
        messages = []
        roles, tools = _split_shape(shape)
        for i, (role, has_reasoning, extras, call_only) in enumerate(roles[:upto]):
            # A reply that only calls tools has no content: templates test for one (`if message.content`).
            content = "" if call_only else f"{left}\x00{i}{CONTENT}\x00{right}"
            message = {"role": role, "content": content, **json.loads(extras or "{}")}
            if has_reasoning:
                message["reasoning_content"] = f"{left}\x00{i}{REASONING}\x00{right}"
            messages.append(message)
        try:
            return render_chat(self.tokenizer, messages, add_generation_prompt=upto is not None,
                               **({"tools": json.loads(tools)} if tools else {}))
        except Exception as e:  # a template's raise_exception, or a template bug: its words, in one line
            what = f"the generation prompt before turn {upto}" if upto is not None else "the conversation"
            raise ChatFormatError(
                f"the chat template cannot render {what} of roles {_roles(shape)} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); use --system-message fold or drop "
                "if it refuses a system turn, or --chat-template FILE with a template that accepts these roles"
            ) from None

    def plan(self, shape: tuple) -> _Plan:
        if shape in self._plans:
            return self._plans[shape]
        roles, tools = _split_shape(shape)
        self._check_tools(shape)
        full = self._render(shape)
        marks = list(_MARK.finditer(full))
        found = [(int(m.group(1)), m.group(2)) for m in marks]
        for (i, which), n in collections.Counter(found).items():
            if n > 1 and roles[i][0] == ASSISTANT:
                raise ChatFormatError(f"the chat template renders assistant turn {i} of roles {_roles(shape)} "
                                      f"{n} times, so no mask can say which copy is learned; use another template")
        dropped = tuple(role for i, (role, _, _, call_only) in enumerate(roles)
                        if (i, CONTENT) not in found and not call_only)
        dropped += tuple("reasoning" for i, (_, has_reasoning, _, _) in enumerate(roles)
                         if has_reasoning and (i, CONTENT) in found and (i, REASONING) not in found)
        strips = self._strips(shape, full, marks)
        starts, matches = {}, {}
        for k, (role, _, _, call_only) in enumerate(roles):
            if role == ASSISTANT and (call_only or any(i == k for i, _ in found)):
                starts[k], matches[k] = self._reply_start(shape, k, full, marks)
        self._check_system(shape, found, dropped)
        self._check_calls_rendered(shape, full, starts)
        items = self._items(full, marks, starts, strips)
        appended = self._final_closer(shape, full, marks)
        if appended is not None:  # the template leaves the last reply open: close it as it closes the others
            items.append(("special", appended, len(full)))
        supervised, closers = self._supervision(shape, items, starts)
        segments: list = []
        for (kind, value, _), sup in zip(items, supervised):
            if kind == "special":
                segments.append(("special", value, sup))
            elif segments and segments[-1][0] == "text" and segments[-1][2] == sup:
                segments[-1][1].append(value)
            else:
                segments.append(("text", [value], sup))
        rule = self.text.prefix_rule  # SentencePiece's "▁" starts a section, or the whole text
        continued = [i > 0 and (rule == "first" or rule == "section" and segments[i - 1][0] == "text")
                     for i in range(len(segments))]
        const_texts = {i: "".join(seg[1]) for i, seg in enumerate(segments)
                       if seg[0] == "text" and all(isinstance(p, str) for p in seg[1])}
        const_ids = dict(zip(const_texts, self._encode_plain(list(const_texts.values()),
                                                             [continued[i] for i in const_texts]))) if const_texts else {}
        first_mismatch = next((k for k in sorted(matches) if not matches[k]), None)
        plan = _Plan(segments, const_ids, closers[0] if closers else None, continued, dropped, first_mismatch, matches,
                     closers, appended)
        self._plans[shape] = plan
        self._notice(shape, plan)
        return plan

    def _strips(self, shape: tuple, full: str, marks: list) -> dict[tuple, tuple[str, str]]:
        """(left, right) strip of every rendered placeholder, from a render with whitespace around each."""
        padded = self._render(shape, pad=True)
        padded_marks = list(_MARK.finditer(padded))
        if [m.group(0) for m in padded_marks] != [m.group(0) for m in marks]:
            raise ChatFormatError(f"the chat template renders roles {_roles(shape)} differently when contents "
                                  "start or end with whitespace, so its output cannot be rebuilt from the contents")
        ends = [0] + [m.end() for m in marks]
        starts = [m.start() for m in marks] + [len(full)]
        padded_ends = [0] + [m.end() for m in padded_marks]
        padded_starts = [m.start() for m in padded_marks] + [len(padded)]
        lefts, rights = {}, {}
        for j, (gap, padded_gap) in enumerate(zip(
                (full[a:b] for a, b in zip(ends, starts)), (padded[a:b] for a, b in zip(padded_ends, padded_starts)))):
            right_options = _escaped(_RIGHT, marks[j - 1]) if j > 0 else {"none": ""}
            left_options = _escaped(_LEFT, marks[j]) if j < len(marks) else {"none": ""}
            fits = {(r, l) for r, r_text in right_options.items() for l, l_text in left_options.items()
                    if padded_gap == r_text + gap + l_text}
            if len(fits) != 1:
                raise ChatFormatError(f"the chat template changes the whitespace around contents of roles "
                                      f"{_roles(shape)} in a way that cannot be rebuilt; use another template")
            (rights[j - 1], lefts[j]), = fits
        return {(int(m.group(1)), m.group(2)): (lefts[j], rights[j], m.group(0)[0] == "\\") for j, m in enumerate(marks)}

    def _reply_start(self, shape: tuple, k: int, full: str, marks: list) -> tuple[int, bool]:
        """Where assistant turn k's supervision starts in `full`, and whether the text before it is
        exactly the generation prompt for turn k. The generation prompt's text after its last
        placeholder (the end of the last turn and the assistant header) is matched against the
        render's text before the reply; what follows the match (a think block, a space) is learned."""
        prompt = self._render(shape, upto=k)
        own = [m.start() for m in marks if int(m.group(1)) == k]
        # A reply that only calls tools has no placeholder: its text runs up to the next message's.
        first = min(own) if own else next((m.start() for m in marks if int(m.group(1)) > k), len(full))
        previous = max((m.end() for m in marks if m.end() <= first and int(m.group(1)) < k), default=0)
        prompt_marks = list(_MARK.finditer(prompt))
        tail = prompt[prompt_marks[-1].end():] if prompt_marks else prompt
        between = full[previous:first]
        start = previous + len(os.path.commonprefix([between, tail]))
        if start - previous < len(tail):  # the prompt closes the last turn otherwise: find its header in the render
            matched = between[: start - previous]
            ends = [m.end() for m in self._special_re.finditer(matched)] if self._special_re else []
            start = previous + max(ends + [matched.rfind("\n") + 1])  # never mid-word: after a newline or a special
            for special in (self._special_re.finditer(tail) if self._special_re else ()):
                header = tail[special.start():]
                if header in between:
                    start = previous + between.index(header) + len(header)
                    break
        for special in (self._special_re.finditer(full, previous, first) if self._special_re else ()):
            if special.start() < start < special.end():  # never cut a special token's text
                start = special.start()
        return start, prompt == full[:start]

    def _final_closer(self, shape: tuple, full: str, marks: list) -> int | None:
        """For a conversation that ends on a reply the template leaves open (nothing but whitespace after
        it, as Apertus and GLM render training data): the special token that closes the same reply when a
        user turn follows (Apertus' <|assistant_end|>, GLM's <|user|>), to be added after it; else None."""
        roles, tools = _split_shape(shape)
        if self.loss_on == "all" or not marks or not roles or roles[-1][0] != ASSISTANT or full[marks[-1].end():].strip():
            return None
        if int(marks[-1].group(1)) != len(roles) - 1:
            return None
        extended = roles + ((USER, False, None, False),) + (((_TOOLS, False, tools, False),) if tools else ())
        longer = self._render(extended)
        last = [m for m in _MARK.finditer(longer) if int(m.group(1)) == len(roles) - 1]
        special = self._special_re.search(longer, last[-1].end()) if last and self._special_re else None
        if special is None or longer[last[-1].end():special.start()].strip():
            return None
        token = special.group(0)
        print(f"prep: the chat template leaves the last reply of roles {_roles(shape)} open; it is closed with "
              f"{token}, as the template closes a reply that a user turn follows", file=sys.stderr)
        return self.tokenizer.convert_tokens_to_ids(token)

    def _check_calls_rendered(self, shape: tuple, full: str, starts: dict) -> None:
        """Refuse a template that leaves an assistant's tool calls out of the render (it expects them
        spelled inside the content, say): they would be neither learned nor seen."""
        roles, _ = _split_shape(shape)
        for k, start in starts.items():
            calls = json.loads(roles[k][2] or "{}").get("tool_calls", [])
            end = min((s for s in starts.values() if s > start), default=len(full))
            missing = [c["function"]["name"] for c in calls if c["function"]["name"] not in full[start:end]]
            if missing:
                raise ChatFormatError(f"the chat template does not render the tool calls of assistant turn {k} "
                                      f"({', '.join(missing)}) of roles {_roles(shape)}; use --chat-template FILE "
                                      "with a template that renders tool_calls")

    def _check_tools(self, shape: tuple) -> None:
        """Tool calls, tool turns or tools given to a template that never mentions tools: refused."""
        roles, tools = _split_shape(shape)
        uses = tools or any(role == TOOL or "tool_calls" in (extras or "") for role, _, extras, _ in roles)
        if uses and "tool" not in (self.tokenizer.chat_template or ""):
            raise ChatFormatError("the chat template has no tool support (it never mentions tools), so tool calls and "
                                  "tool turns cannot be rendered; leave tool records out (or --skip-bad), or give "
                                  "--chat-template FILE with a template that renders them")

    def _check_system(self, shape: tuple, found: list, dropped: tuple) -> None:
        """--system-message error: refuse a template that drops or moves the system message."""
        roles, _ = _split_shape(shape)
        if self.system_message != "error" or not roles or roles[0][0] != SYSTEM:
            return
        if SYSTEM in dropped or found[0] != (0, CONTENT):
            what = "drops" if SYSTEM in dropped else "moves"
            raise ChatFormatError(
                f"the chat template {what} the system message of roles {_roles(shape)} (--system-message error); "
                "use --system-message fold to prepend it to the first user turn, drop to leave it out, or keep")

    def _items(self, full: str, marks: list, starts: dict, strips: dict) -> list[tuple]:
        """The render as ("special", id, pos) | ("text", str, pos) | ("mark", (i, field, l, r), pos),
        text cut at every reply start."""
        cuts = sorted(set(starts.values()))
        items: list[tuple] = []
        pos = 0
        # Walk the render: placeholders, special tokens and text in order.
        edges = [(m.start(), m.end(), (int(m.group(1)), m.group(2))) for m in marks]
        for a, b, key in edges + [(len(full), len(full), None)]:
            items.extend(self._text_items(full, pos, a, cuts))
            if key is not None:
                items.append(("mark", key + strips[key], a))
            pos = b
        return items

    def _text_items(self, full: str, a: int, b: int, cuts: list[int]) -> list[tuple]:
        """Template text full[a:b] as special tokens and text pieces, cut at `cuts`."""
        items: list[tuple] = []
        pos = a
        for special in (self._special_re.finditer(full, a, b) if self._special_re else ()):
            items.extend(_cut(full, pos, special.start(), cuts))
            items.append(("special", self.tokenizer.convert_tokens_to_ids(special.group(0)), special.start()))
            pos = special.end()
        items.extend(_cut(full, pos, b, cuts))
        return items

    def _supervision(self, shape: tuple, items: list[tuple], starts: dict) -> tuple[list[bool], list[int]]:
        """Per item, whether it is a label: from each reply's start through its last placeholder and
        up to and including the first special token after it (the end of turn). Also the closing ids."""
        if self.loss_on == "all":
            return [True] * len(items), []
        begins = {pos: k for k, pos in starts.items()}
        last = {k: max((i for i, (kind, value, _) in enumerate(items) if kind == "mark" and value[0] == k), default=None)
                for k in starts}
        supervised, closers = [], []
        active, closing = None, False
        # A reply with tool calls closes at the token that closes plain replies ([ARGS] or [TOOL_CALLS] may come first).
        roles, _ = _split_shape(shape)
        calls = {k: "tool_calls" in (roles[k][2] or "") and bool(self._closers) for k in starts}
        for n, (kind, value, pos) in enumerate(items):
            if active is None and pos in begins:
                active = begins.pop(pos)
                closing = last[active] is None  # a reply that only calls tools closes at the next closer
            if kind == "mark" and active is not None and value[0] != active:
                raise self._unclosed(shape)
            supervised.append(active is not None)
            if kind == "special" and closing and (not calls[active] or value in self._closers):
                closers.append(value)
                active, closing = None, False
            if active is not None and n == last[active]:
                closing = True
        if active is not None:
            raise self._unclosed(shape)
        return supervised, closers

    def _unclosed(self, shape: tuple) -> ChatFormatError:
        return ChatFormatError(
            f"the chat template closes an assistant turn with no special token (roles {_roles(shape)}), so the "
            "loss mask cannot tell where a reply ends, nor generation where to stop; use a template that ends "
            "each turn with a special token (e.g. <|im_end|>, <|eot_id|>), or --loss-on all"
        )

    def _notice(self, shape: tuple, plan: _Plan) -> None:
        """One line on stderr for each shape the template renders other than as given."""
        if plan.dropped:
            fix = " (--system-message fold keeps it in the first user turn)" if SYSTEM in plan.dropped else ""
            left_out = ", ".join(f"{n} {role}" for role, n in collections.Counter(plan.dropped).items())
            print(f"prep: the chat template leaves out {left_out} of roles {_roles(shape)}: "
                  f"those are not trained on{fix}", file=sys.stderr)
        if plan.first_mismatch is not None:
            print(f"prep: the chat template's generation prompt for turn {plan.first_mismatch} of roles "
                  f"{_roles(shape)} differs from the conversation's text before that reply; masks follow the "
                  "conversation (recorded as prompt_matches_generation: false)", file=sys.stderr)

    # ----------------------------------------------------------------- encoding

    def prepare(self, conversation: tuple) -> tuple:
        """The conversation after --system-message: fold prepends a leading system message to the
        first user turn; drop removes system messages."""
        if self.system_message == "drop":
            return tuple(m for m in conversation if m[0] != SYSTEM)
        if (self.system_message == "fold" and len(conversation) > 1 and conversation[0][0] == SYSTEM
                and conversation[1][0] == USER):
            return ((USER, f"{conversation[0][1]}\n\n{conversation[1][1]}"),) + tuple(conversation[2:])
        return tuple(conversation)

    def shape(self, conversation: tuple, tools: str | None = None) -> tuple:
        """What the plan depends on: each message's role, whether it has reasoning, its other fields
        (tool calls are rendered by the template as they are), and the conversation's tools."""
        entries = tuple((m[0], len(m) > 2 and m[2] is not None, m[3] if len(m) > 3 else None,
                         m[0] == ASSISTANT and m[1] == "" and len(m) > 3 and "tool_calls" in (m[3] or ""))
                        for m in conversation)
        return entries + ((_TOOLS, False, tools, False),) if tools else entries

    def encode(self, conversations: list[tuple], tools: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode a batch (after `prepare`). Returns flat `ids` (int64), flat `mask` (uint8) and
        `offsets` (sample i is ids[offsets[i]:offsets[i+1]]). `tools`: each conversation's tools (JSON) or None.
        A ChatFormatError raised for a conversation carries its place in the batch as `position`.

        >>> enc = ConversationEncoder(ensure_chat_format(load_tokenizer("gpt2")))
        >>> ids, mask, offsets = enc.encode([(("user", "Hi"), ("assistant", "Yo"))])
        >>> enc.tokenizer.decode(ids[mask == 1])
        'Yo<|im_end|>'
        >>> enc.tokenizer.decode(ids[mask == 0])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\\n'
        """
        conversations = [self.prepare(conv) for conv in conversations]
        shapes = [self.shape(conv, t) for conv, t in zip(conversations, tools or [None] * len(conversations))]
        plans = []
        for position, shape in enumerate(shapes):
            try:
                plans.append(self.plan(shape))
            except ChatFormatError as e:
                e.position = position
                raise
        texts: list[str] = []
        continued: list[bool] = []
        for conv, plan, shape in zip(conversations, plans, shapes):
            self.dropped.update(plan.dropped)
            if plan.appended is not None:
                self.closed[self._spelling[plan.appended]] += 1
            if plan.first_mismatch is not None:
                self.mismatches.setdefault(_roles(shape), [plan.first_mismatch, 0])[1] += 1
            for i, seg in enumerate(plan.segments):
                if seg[0] == "text" and i not in plan.const_ids:
                    texts.append(_fill(seg[1], conv))
                    continued.append(plan.continued[i])
        encoded = iter(self._encode_plain(texts, continued)) if texts else iter(())
        # Gather the pieces as lists and convert once: per-token Python work is the cost here.
        pieces: list[list[int]] = []
        supervised: list[bool] = []
        pieces_per_sample = np.empty(len(plans), dtype=np.int64)
        for k, plan in enumerate(plans):
            for i, (kind, value, sup) in enumerate(plan.segments):
                pieces.append([value] if kind == "special" else plan.const_ids[i] if i in plan.const_ids else next(encoded))
            supervised.extend(plan.supervised)
            pieces_per_sample[k] = len(plan.segments)
        piece_lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        total = int(piece_lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=total)
        if self.loss_on == "all":
            mask = np.ones(total, dtype=np.uint8)
        else:
            mask = np.repeat(np.array(supervised, dtype=np.uint8), piece_lengths)
        piece_ends = np.cumsum(piece_lengths)
        offsets = np.concatenate([[0], piece_ends[np.cumsum(pieces_per_sample) - 1]]) if len(plans) else np.zeros(1, np.int64)
        return ids, mask, offsets.astype(np.int64)

    def check_prompts(self, conversations, ids: np.ndarray, offsets: np.ndarray,
                      tools: list | None = None) -> tuple[int, str] | None:
        """Render the first `CHECKS_PER_SHAPE` conversations of every shape with their real contents
        and compare: the template's text with the plan's (a template that looks inside contents
        renders them differently from placeholders), and each generation prompt's tokens, alone as
        generation tokenizes them, with the conversation's. Returns (position, reason) of the first
        mismatching conversation. Conversations whose text holds a special-token string are skipped:
        on its own the tokenizer would parse it as a control token, which the conversation rightly does not.
        """
        for k, conv in enumerate(conversations):
            conv = self.prepare(conv)
            conv_tools = tools[k] if tools else None
            shape = self.shape(conv, conv_tools)
            if self._checked[shape] >= CHECKS_PER_SHAPE:
                continue
            if self._special_re and any(self._special_re.search(t) for m in conv for t in m[1:] if t):
                continue
            self._checked[shape] += 1
            plan = self.plan(shape)
            messages = [_message(m) for m in conv]
            options = {"tools": json.loads(conv_tools)} if conv_tools else {}
            appended = self._spelling[plan.appended] if plan.appended is not None else ""
            if render_chat(self.tokenizer, messages, **options) + appended != plan.text(conv, self._spelling):
                return k, "the chat template renders its contents differently from placeholders (it looks inside them)"
            row = list(ids[offsets[k]:offsets[k + 1]])
            for turn in (t for t, ok in plan.matches.items() if ok):
                text = render_chat(self.tokenizer, messages[:turn], add_generation_prompt=True, **options)
                alone = self._backend.encode(text, add_special_tokens=False).ids
                if row[: len(alone)] != alone:
                    return k, "its rendered prompt tokenizes differently on its own than inside the conversation"
        return None


def _message(message: tuple) -> dict:
    role, content, reasoning = message_fields(message)
    return {"role": role, "content": content, **({"reasoning_content": reasoning} if reasoning is not None else {}),
            **message_extras(message)}


def _cut(full: str, a: int, b: int, cuts: list[int]) -> list[tuple]:
    """("text", piece, pos) for full[a:b], cut at the positions in `cuts`."""
    edges = [a] + [c for c in cuts if a < c < b] + [b]
    return [("text", full[x:y], x) for x, y in zip(edges, edges[1:]) if y > x]


def _escaped(options: dict, mark) -> dict:
    """The whitespace options as a placeholder written through `tojson` shows them."""
    if mark.group(0)[0] != "\\":
        return options
    return {name: json.dumps(text)[1:-1] for name, text in options.items()}


def _split_shape(shape: tuple) -> tuple[tuple, str | None]:
    """(the messages' (role, has_reasoning, extras, call_only) entries, the tools' JSON or None) of a shape."""
    if shape and shape[-1][0] == _TOOLS:
        return shape[:-1], shape[-1][2]
    return shape, None


def _roles(shape: tuple) -> tuple:
    return tuple(entry[0] for entry in _split_shape(shape)[0])

"""Tokenizer, chat format and the conversation encoder: ids and loss masks, in batches.

`ConversationEncoder` turns conversations into ids and per-token loss masks from the plans
`prep.chat_plan` makes of the model's own chat template (what is learned, and how templates
that move or drop messages are handled, is said there), then checks the first conversations
of every shape against the template rendered with their real contents. A tokenizer without a
chat template gets ChatML (`ensure_chat_format`).
"""
from __future__ import annotations

import collections
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from prep.conversations import message_dict, prepare, shape as shape_of, shape_roles
from prep.chat_plan import ChatFormatError, Planner, _fill  # noqa: F401 - ChatFormatError: prep's callers import it here
from prep.encoders import TextEncoder
from prep.tool_turns import adapt
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


@dataclass
class Tally:
    """What the template did to a run's conversations, summed over batches (and over processes: `add`).

    `dropped`: messages the template left out, by role; `closed`: last replies it left open, by the token
    added; `shapes`: conversations per shape; `first_mismatch`: per shape whose training prompt differs
    from generation's, the first such turn.
    """

    dropped: collections.Counter = field(default_factory=collections.Counter)
    closed: collections.Counter = field(default_factory=collections.Counter)
    shapes: collections.Counter = field(default_factory=collections.Counter)
    first_mismatch: dict = field(default_factory=dict)

    def add(self, other: "Tally") -> None:
        self.dropped.update(other.dropped)
        self.closed.update(other.closed)
        self.shapes.update(other.shapes)
        for shape, turn in other.first_mismatch.items():
            self.first_mismatch[shape] = min(turn, self.first_mismatch.get(shape, turn))

    @property
    def mismatches(self) -> dict[tuple, list[int]]:
        """Per roles: [the first differing turn, conversations], over every shape of those roles."""
        out: dict[tuple, list[int]] = {}
        for shape, turn in self.first_mismatch.items():
            entry = out.setdefault(shape_roles(shape), [turn, 0])
            entry[0], entry[1] = min(entry[0], turn), entry[1] + self.shapes[shape]
        return out


class ConversationEncoder:
    """Turn conversations (tuples of (role, content[, reasoning[, extras]])) into ids and loss masks, in batches.

    `tally` records what the template did (Tally): `dropped`, `closed` and `mismatches` read it.
    `verify_encoder=False` skips the encoder's start-of-run check (prep's workers: the driver made it).
    """

    def __init__(self, tokenizer, loss_on: str = "assistant", encoder: str = "auto", system_message: str = "keep",
                 verify_encoder: bool = True):
        if loss_on not in get_args(LossOn):
            raise ValueError(f"loss_on must be one of {get_args(LossOn)}, got {loss_on!r}")
        if system_message not in get_args(SystemMessage):
            raise ValueError(f"system_message must be one of {get_args(SystemMessage)}, got {system_message!r}")
        self.tokenizer, self.loss_on = tokenizer, loss_on
        self.eos_id = tokenizer.eos_token_id
        # Texts are encoded in parallel batches with special-token parsing off: template
        # specials are inserted as ids by the plan (prep.encoders picks tiktoken or tokenizers).
        self.text = TextEncoder(tokenizer, encoder, verify=verify_encoder)
        self.planner = Planner(tokenizer, self.text, loss_on, system_message)
        self._backend = tokenizer.backend_tokenizer  # the prompt check tokenizes as generation does
        self.tally = Tally()
        # Where generation must stop: the end of an assistant turn, from the template itself.
        self.end_of_turn_id = self.planner.end_of_turn if self.planner.end_of_turn is not None else self.eos_id

    @property
    def dropped(self) -> collections.Counter:
        return self.tally.dropped

    @property
    def closed(self) -> collections.Counter:
        return self.tally.closed

    @property
    def mismatches(self) -> dict[tuple, list[int]]:
        return self.tally.mismatches

    def take_tally(self) -> Tally:
        """The tally since the last call (a worker sends it with each batch), and a fresh one."""
        tally, self.tally = self.tally, Tally()
        return tally

    def plan(self, shape: tuple):
        return self.planner.plan(shape)

    def prepare(self, conversation: tuple) -> tuple:
        return prepare(conversation, self.planner.system_message)

    def shape(self, conversation: tuple, tools: str | None = None) -> tuple:
        return shape_of(conversation, tools)

    def texts(self, conversations: list[tuple], tools: list | None = None) -> tuple[list, list[str], list[bool]]:
        """A batch's plans, the texts `encode` tokenizes (in order), and whether each continues a section;
        the counters (dropped, closed, mismatches) are updated. The benchmarks' prep floor calls it too.
        A ChatFormatError raised for a conversation carries its place in the batch as `position`."""
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
        self.tally.shapes.update(shapes)
        for conv, plan, shape in zip(conversations, plans, shapes):
            self.tally.dropped.update(plan.dropped)
            if plan.appended is not None:
                self.tally.closed[self.planner.spelling[plan.appended]] += 1
            if plan.first_mismatch is not None:
                self.tally.first_mismatch[shape] = plan.first_mismatch
            for i, seg in enumerate(plan.segments):
                if seg[0] == "text" and i not in plan.const_ids:
                    texts.append(_fill(seg[1], conv))
                    continued.append(plan.continued[i])
        return plans, texts, continued

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
        plans, texts, continued = self.texts(conversations, tools)
        encoded = iter(self.text.encode(texts, continued)) if texts else iter(())
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
                      tools: list | None = None, mask: np.ndarray | None = None) -> tuple[int, str] | None:
        """Render the first `CHECKS_PER_SHAPE` conversations of every shape in the batch with their real contents
        and compare: the template's text with the plan's (a template that looks inside contents
        renders them differently from placeholders), and each generation prompt's tokens, alone as
        generation tokenizes them, with the conversation's. Returns (position, reason) of the first
        mismatching conversation. Conversations whose text holds a special-token string are skipped:
        on its own the tokenizer would parse it as a control token, which the conversation rightly does not.
        With `mask`, a difference where an earlier reply starts (BPE merges Qwen3.5's `<think>\n` with the
        `\n</think>` of a reply without reasoning when generation re-tokenizes the history) is not an
        error: that turn's prompt is recorded as differing from generation's, as the planner does for text.
        Which conversations are checked depends on the batch alone, so prep's workers check the same ones.
        """
        checked: collections.Counter = collections.Counter()
        for k, conv in enumerate(conversations):
            conv = self.prepare(conv)
            conv_tools = tools[k] if tools else None
            shape = self.shape(conv, conv_tools)
            if checked[shape] >= CHECKS_PER_SHAPE:
                continue
            if self.planner.special_re and any(self.planner.special_re.search(t) for m in conv for t in m[1:] if t):
                continue
            checked[shape] += 1
            plan = self.plan(shape)
            messages = adapt([message_dict(m) for m in conv], plan.adaptations)
            options = {"tools": json.loads(conv_tools)} if conv_tools else {}
            appended = self.planner.spelling[plan.appended] if plan.appended is not None else ""
            if render_chat(self.tokenizer, messages, **options) + appended != plan.text(conv, self.planner.spelling):
                return k, "the chat template renders its contents differently from placeholders (it looks inside them)"
            row = list(ids[offsets[k]:offsets[k + 1]])
            for turn in (t for t, ok in plan.matches.items() if ok):
                text = render_chat(self.tokenizer, messages[:turn], add_generation_prompt=True, **options)
                alone = self._backend.encode(text, add_special_tokens=False).ids
                if row[: len(alone)] != alone:
                    if not self._merged_at_reply_start(row, alone, mask, offsets[k]):
                        return k, "its rendered prompt tokenizes differently on its own than inside the conversation"
                    self._record_mismatch(plan, shape, turn)
        return None

    @staticmethod
    def _merged_at_reply_start(row: list, alone: list, mask: np.ndarray | None, offset: int) -> bool:
        """Whether the first token where `row` and `alone` differ is next to a change of the loss mask."""
        if mask is None:
            return False
        d = next(i for i, (a, b) in enumerate(zip(row + [None], alone + [None])) if a != b)
        bits = mask[offset + max(d - 1, 0): offset + d + 2]
        return d > 0 and len(set(bits.tolist())) > 1

    def _record_mismatch(self, plan, shape: tuple, turn: int) -> None:
        """Turn `turn` of `shape` trains on a prompt that generation tokenizes otherwise: recorded, said once."""
        plan.matches[turn] = False
        if plan.first_mismatch is not None and plan.first_mismatch <= turn:
            return
        plan.first_mismatch = self.tally.first_mismatch[shape] = turn  # the tally counts the shape's conversations
        print(f"prep: the generation prompt for turn {turn} of roles {shape_roles(shape)} tokenizes otherwise than "
              "the conversation where an earlier reply starts; masks follow the conversation (recorded as "
              "prompt_matches_generation: false)", file=sys.stderr)

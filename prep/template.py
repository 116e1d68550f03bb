"""Tokenizer, chat format and loss masks.

A conversation becomes `input_ids` plus a per-token `loss_mask`, built by
construction: the chat template is rendered once per conversation shape (the
sequence of roles) with placeholder contents, which splits it into fixed
template text and the message contents. Each sample is then tokenized segment
by segment, where a segment ends at every special token of the template and at
every prompt/response boundary:

    <|im_start|> "user\\n{prompt}" <|im_end|> "\\n" <|im_start|> "assistant\\n" | "{output}" <|im_end|> | "\\n"
                  mask 0                                         mask 0           mask 1     mask 1     mask 0

So the ids of the prompt are exactly what the tokenizer gives for the rendered
prompt alone (what generation sees), and the response's ids follow them: the
prompt is a token prefix of the conversation by construction, and that is
checked against the template (`ChatFormatError` otherwise, never a warning).
Message contents are tokenized with special-token parsing off, so a user who
types `<|im_start|>` gets plain text, not a forged turn.

Supervision covers each assistant content and the template's tokens up to and including
the first special token after it: the template's end of turn (`<|im_end|>`, `<|eot_id|>`,
`<end_of_turn>`), whatever the tokenizer's eos is. A template that closes an assistant
turn with no special token is refused (unless loss_on="all"): nothing would tell the
model, or generation, where its reply ends. Templates that `| trim` contents (Llama 3,
Gemma) are detected and the contents trimmed the same way.
"""
from __future__ import annotations

import collections
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from prep.encoders import TextEncoder
from prep.records import ASSISTANT, USER
from sftcli import UserError

GPT2_DIR = Path(__file__).parent / "assets" / "gpt2"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# The ChatML template that TRL's setup_chat_format installs.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Which tokens carry a loss: each assistant reply and its end-of-turn token, or every token (the seed's code).
LossOn = Literal["assistant", "all"]
CHECKS_PER_SHAPE = 4
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")  # NUL never occurs in validated records


def _content(conversation, index: int, trimmed: frozenset) -> str:
    content = conversation[index][1]
    return content.strip() if index in trimmed else content


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


@dataclass
class _Plan:
    """One conversation shape: segments of fixed text, contents and special ids, with mask bits."""

    segments: list  # each: (kind, value, supervised); kind "special" (id) | "text" (list of str|int parts)
    const_ids: dict  # segment index -> token ids of segments without contents
    trimmed: frozenset  # message indices whose content the template trims
    end_of_turn: int | None  # the special token that closes the assistant turns

    @property
    def supervised(self) -> list[bool]:
        return [seg[2] for seg in self.segments]


class ConversationEncoder:
    """Turn conversations (tuples of (role, content)) into ids and loss masks, in batches."""

    def __init__(self, tokenizer, loss_on: str = "assistant", encoder: str = "auto"):
        if loss_on not in get_args(LossOn):
            raise ValueError(f"loss_on must be one of {get_args(LossOn)}, got {loss_on!r}")
        self.tokenizer, self.loss_on = tokenizer, loss_on
        self.eos_id = tokenizer.eos_token_id
        specials = sorted({t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        # Texts are encoded in parallel batches with special-token parsing off: template
        # specials are inserted as ids by the plan (prep.encoders picks tiktoken or tokenizers).
        self.text = TextEncoder(tokenizer, encoder)
        self._backend = tokenizer.backend_tokenizer  # the prompt check tokenizes as generation does
        self._plans: dict[tuple, _Plan] = {}
        self._checked: collections.Counter = collections.Counter()  # conversations checked per shape
        # Where generation must stop: the end of an assistant turn, from the template itself.
        self.end_of_turn_id = self.plan((USER, ASSISTANT)).end_of_turn
        if self.end_of_turn_id is None:
            self.end_of_turn_id = self.eos_id

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return self.text.encode(texts)

    def _render(self, roles: tuple, upto: int | None = None, pad: str = "") -> str:
        messages = [{"role": r, "content": f"{pad}\x00{i}\x00{pad}"} for i, r in enumerate(roles)]
        if upto is None:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return self.tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=True)

    def plan(self, roles: tuple) -> _Plan:
        if roles in self._plans:
            return self._plans[roles]
        full = self._render(roles)
        pieces = _PLACEHOLDER.split(full)
        found = [int(p) for p in pieces[1::2]]
        if found != list(range(len(roles))):
            raise ChatFormatError(
                f"the chat template does not render every message once, in order (roles {roles}); "
                "it cannot be used for exact loss masks"
            )
        for turn, role in enumerate(roles):
            if role != ASSISTANT:
                continue
            prompt = self._render(roles, upto=turn)
            start = full.index(f"\x00{turn}\x00")
            if prompt != full[:start]:
                raise ChatFormatError(
                    f"the chat template's generation prompt for turn {turn} of roles {roles} is not a prefix "
                    f"of the rendered conversation:\n  prompt: {prompt[-80:]!r}\n  conversation: {full[:start][-80:]!r}\n"
                    "so the prompt's tokens cannot be a prefix of the conversation's; fix the template"
                )
        # items: ("special", id) | ("text", str) | ("content", index)
        items: list[tuple] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                items.append(("content", int(piece)))
                continue
            for j, part in enumerate(self._special_re.split(piece) if self._special_re else [piece]):
                if j % 2:
                    items.append(("special", self.tokenizer.convert_tokens_to_ids(part)))
                elif part:
                    items.append(("text", part))
        supervised, closers = self._supervision(roles, items)
        segments: list = []
        for (kind, value), sup in zip(items, supervised):
            if kind == "special":
                segments.append(("special", value, sup))
            elif segments and segments[-1][0] == "text" and segments[-1][2] == sup:
                segments[-1][1].append(value)
            else:
                segments.append(("text", [value], sup))
        const_texts = {i: "".join(seg[1]) for i, seg in enumerate(segments)
                       if seg[0] == "text" and all(isinstance(p, str) for p in seg[1])}
        const_ids = dict(zip(const_texts, self._encode_plain(list(const_texts.values())))) if const_texts else {}
        # A content rendered without the spaces around its placeholder is trimmed by the template.
        padded = self._render(roles, pad=" ")
        trimmed = frozenset(i for i in range(len(roles)) if f" \x00{i}\x00 " not in padded)
        plan = _Plan(segments, const_ids, trimmed, closers[0] if closers else None)
        self._plans[roles] = plan
        return plan

    def _supervision(self, roles: tuple, items: list[tuple]) -> tuple[list[bool], list[int]]:
        """Per item, whether it is a label: each assistant content and what follows it up to and
        including the first special token (the end of turn). Also the ids that closed turns."""
        supervised, closers, on = [], [], False
        for kind, value in items:
            if kind == "content" and roles[value] == ASSISTANT:
                if on and self.loss_on == "assistant":
                    raise self._unclosed(roles)
                on = True
            supervised.append(on)
            if kind == "special" and on:
                closers.append(value)
                on = False
        if on and self.loss_on == "assistant":
            raise self._unclosed(roles)
        return supervised, closers

    def _unclosed(self, roles: tuple) -> ChatFormatError:
        return ChatFormatError(
            f"the chat template closes an assistant turn with no special token (roles {roles}), so the loss "
            "mask cannot tell where a reply ends, nor generation where to stop; use a template that ends "
            "each turn with a special token (e.g. <|im_end|>, <|eot_id|>), or --loss-on all"
        )

    def encode(self, conversations: list[tuple[tuple[str, str], ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode a batch. Returns flat `ids` (int64), flat `mask` (uint8) and `offsets`
        (sample i is ids[offsets[i]:offsets[i+1]]).

        >>> enc = ConversationEncoder(ensure_chat_format(load_tokenizer("gpt2")))
        >>> ids, mask, offsets = enc.encode([(("user", "Hi"), ("assistant", "Yo"))])
        >>> enc.tokenizer.decode(ids[mask == 1])
        'Yo<|im_end|>'
        >>> enc.tokenizer.decode(ids[mask == 0])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\\n'
        """
        plans = [self.plan(tuple(role for role, _ in conv)) for conv in conversations]
        texts: list[str] = []
        for conv, plan in zip(conversations, plans):
            for i, seg in enumerate(plan.segments):
                if seg[0] == "text" and i not in plan.const_ids:
                    texts.append("".join(p if isinstance(p, str) else _content(conv, p, plan.trimmed)
                                         for p in seg[1]))
        encoded = iter(self._encode_plain(texts)) if texts else iter(())
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

    def check_prompts(self, conversations, ids: np.ndarray, offsets: np.ndarray) -> int | None:
        """Tokenize rendered prompts on their own, as generation will, and compare them with the
        conversation's tokens. Returns the position of the first mismatching conversation.

        Every conversation shape is checked whenever it appears, in any batch, on its first
        `CHECKS_PER_SHAPE` conversations, at every assistant turn: the construction is the same
        for every conversation of a shape, so more would only cost time. Conversations whose
        text holds a special-token string are skipped: on its own the tokenizer would parse it
        as a control token, which the conversation rightly does not.
        """
        for k, conv in enumerate(conversations):
            shape = tuple(role for role, _ in conv)
            if self._checked[shape] >= CHECKS_PER_SHAPE:
                continue
            if self._special_re and any(self._special_re.search(c) for _, c in conv):
                continue
            self._checked[shape] += 1
            row = list(ids[offsets[k]:offsets[k + 1]])
            for turn in (i for i, role in enumerate(shape) if role == ASSISTANT):
                messages = [{"role": r, "content": c} for r, c in conv[:turn]]
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                alone = self._backend.encode(text, add_special_tokens=False).ids
                if row[: len(alone)] != alone:
                    return k
        return None

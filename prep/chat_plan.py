"""Chat-template plans: where a model's own template puts each message, and which tokens are learned.

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
are detected and the contents stripped the same way. A last reply the template leaves open
(Apertus, GLM) is closed with the token that closes the same reply when a user turn follows.
Tool calls are learned as part of their turn, up to the token that hands the turn to the tool
(prep/tool_turns.py), tool results never. Refused, in one line each: a
template that cannot render the conversation, that renders a reply twice, or that closes
a reply with no special token (nothing would tell the model, or generation, where a
reply ends; `--loss-on all` supervises everything instead).
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys
from dataclasses import dataclass, field

from prep import tool_turns
from prep.tool_turns import MARK
from prep.conversations import PLAIN, TOOLS, ChatFormatError, message_fields, shape_roles, split_shape
from prep.records import ASSISTANT, SYSTEM, USER
from shards.prompts import render_chat

CONTENT, REASONING = "c", "r"  # the two supervised fields a message has: its content and its reasoning
# Whitespace put around every placeholder in a second render: what the template leaves of it tells how it strips.
_PAD_LEFT, _PAD_RIGHT = "\n\t\n", "\n \n"
_LEFT = {"none": _PAD_LEFT, "nl": _PAD_LEFT.lstrip("\n"), "ws": ""}
_RIGHT = {"none": _PAD_RIGHT, "nl": _PAD_RIGHT.rstrip("\n"), "ws": ""}


def special_tokens(tokenizer) -> list[str]:
    """Every token the template may use as a control token: the special-tokens map and every
    added token marked special (Gemma's `<end_of_turn>`, Phi-3's `<|end|>`, Llama 3's header
    tokens are outside the map), longest first so a regex prefers `<|im_end|>` to `<|im`."""
    tokens = {t for t in tokenizer.all_special_tokens if t}
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content}
    return sorted(tokens, key=len, reverse=True)


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
    adaptations: tuple = ()  # what the template needs of the tool messages (tool_turns.ADAPTATIONS)

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


class Planner:
    """One `_Plan` per conversation shape, from renders of the template over placeholders.

    `text` encodes the fixed texts of a plan; `end_of_turn` is the id that closes a plain reply.
    """

    def __init__(self, tokenizer, text, loss_on: str, system_message: str):
        self.tokenizer, self.text, self.loss_on, self.system_message = tokenizer, text, loss_on, system_message
        specials = special_tokens(tokenizer)
        self.special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.spelling = {tokenizer.convert_tokens_to_ids(t): t for t in specials}
        self._plans: dict[tuple, _Plan] = {}
        self.adaptations: tuple = ()  # what the template needs of the tool messages of the shape being planned
        self.closers: set[int] = set()  # what closes a plain reply: where a reply with tool calls closes too
        self.added_re = tool_turns.added_tokens_re(tokenizer)
        self.opener = tool_turns.turn_opener(self)
        plain = self.plan(PLAIN)
        self.end_of_turn, self.closers = plain.end_of_turn, set(plain.closers)

    def render(self, shape: tuple, upto: int | None = None, pad: bool = False) -> str:
        """The template over placeholders: the whole conversation, or the generation prompt before turn `upto`."""
        left, right = (_PAD_LEFT, _PAD_RIGHT) if pad else ("", "")
        messages = []
        roles, tools = split_shape(shape)
        for i, (role, has_reasoning, extras, call_only) in enumerate(roles[:upto]):
            # A reply that only calls tools has no content: templates test for one (`if message.content`).
            content = "" if call_only else f"{left}\x00{i}{CONTENT}\x00{right}"
            message = {"role": role, "content": content, **json.loads(extras or "{}")}
            if has_reasoning:
                message["reasoning_content"] = f"{left}\x00{i}{REASONING}\x00{right}"
            messages.append(message)
        options = {"add_generation_prompt": upto is not None, **({"tools": json.loads(tools)} if tools else {})}
        try:
            return self._render_adapted(messages, options)
        except Exception as e:  # a template's raise_exception, or a template bug: its words, in one line
            what = f"the generation prompt before turn {upto}" if upto is not None else "the conversation"
            fix = ("--chat-template FILE with a template that takes OpenAI-style tools and tool_calls" if tools or
                   tool_turns.has_calls(messages) else "--system-message fold or drop if it refuses a system turn, or "
                   "--chat-template FILE with a template that accepts these roles")
            raise ChatFormatError(
                f"the chat template cannot render {what} of roles {shape_roles(shape)} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); use {fix}") from None

    def _render_adapted(self, messages: list[dict], options: dict) -> str:
        """render_chat, adapting tool messages as the template needs (tool_turns.ADAPTATIONS): the adaptations
        that make a failing render work are kept for the shape's later renders, its plan and check_prompts
        (per shape, so a shape's render never depends on which shapes came before it)."""
        first_error = None
        for extra in tool_turns.more_adaptations(self.adaptations):
            try:
                text = render_chat(self.tokenizer, tool_turns.adapt(messages, self.adaptations + extra), **options)
            except Exception as e:
                first_error = first_error or e  # the template's words for the messages as given
                if not tool_turns.has_calls(messages):
                    raise
                continue
            self.adaptations += extra
            return text
        raise first_error

    def plan(self, shape: tuple) -> _Plan:
        if shape in self._plans:
            return self._plans[shape]
        roles, tools = split_shape(shape)
        tool_turns.check_tools(self.tokenizer, shape)
        self.adaptations = ()
        full = self.render(shape)
        marks = list(MARK.finditer(full))
        found = [(int(m.group(1)), m.group(2)) for m in marks]
        for (i, which), n in collections.Counter(found).items():
            if n > 1 and roles[i][0] == ASSISTANT:
                raise ChatFormatError(f"the chat template renders assistant turn {i} of roles {shape_roles(shape)} "
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
        tool_turns.check_calls_rendered(shape, full, starts)
        ends = tool_turns.call_ends(self, shape, full, marks, starts)
        items = self._items(full, marks, sorted(set(starts.values()) | set(ends.values())), strips)
        appended = self._final_closer(shape, full, marks)
        if appended is not None:  # the template leaves the last reply open: close it as it closes the others
            items.append(("special", appended, len(full)))
        supervised, closers = self._supervision(shape, items, starts, ends)
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
        const_ids = dict(zip(const_texts, self.text.encode(list(const_texts.values()),
                                                           [continued[i] for i in const_texts]))) if const_texts else {}
        first_mismatch = next((k for k in sorted(matches) if not matches[k]), None)
        plan = _Plan(segments, const_ids, closers[0] if closers else None, continued, dropped, first_mismatch, matches,
                     closers, appended, self.adaptations)
        self._plans[shape] = plan
        self._notice(shape, plan)
        return plan

    def _strips(self, shape: tuple, full: str, marks: list) -> dict[tuple, tuple[str, str]]:
        """(left, right) strip of every rendered placeholder, from a render with whitespace around each."""
        padded = self.render(shape, pad=True)
        padded_marks = list(MARK.finditer(padded))
        if [m.group(0) for m in padded_marks] != [m.group(0) for m in marks]:
            raise ChatFormatError(f"the chat template renders roles {shape_roles(shape)} differently when contents "
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
                                      f"{shape_roles(shape)} in a way that cannot be rebuilt; use another template")
            (rights[j - 1], lefts[j]), = fits
        return {(int(m.group(1)), m.group(2)): (lefts[j], rights[j], m.group(0)[0] == "\\") for j, m in enumerate(marks)}

    def _reply_start(self, shape: tuple, k: int, full: str, marks: list) -> tuple[int, bool]:
        """Where assistant turn k's supervision starts in `full`, and whether the text before it is
        exactly the generation prompt for turn k. The generation prompt's text after its last
        placeholder (the end of the last turn and the assistant header) is matched against the
        render's text before the reply; what follows the match (a think block, a space) is learned."""
        prompt = self.render(shape, upto=k)
        own = [m.start() for m in marks if int(m.group(1)) == k]
        # A reply that only calls tools has no placeholder: its text runs up to the next message's.
        first = min(own) if own else next((m.start() for m in marks if int(m.group(1)) > k), len(full))
        previous = max((m.end() for m in marks if m.end() <= first and int(m.group(1)) < k), default=0)
        prompt_marks = list(MARK.finditer(prompt))
        tail = prompt[prompt_marks[-1].end():] if prompt_marks else prompt
        between = full[previous:first]
        start = previous + len(os.path.commonprefix([between, tail]))
        if start - previous < len(tail):  # the prompt closes the last turn otherwise: find its header in the render
            matched = between[: start - previous]
            ends = [m.end() for m in self.special_re.finditer(matched)] if self.special_re else []
            start = previous + max(ends + [matched.rfind("\n") + 1])  # never mid-word: after a newline or a special
            for special in (self.special_re.finditer(tail) if self.special_re else ()):
                header = tail[special.start():]
                if header in between:
                    start = previous + between.index(header) + len(header)
                    break
        for special in (self.special_re.finditer(full, previous, first) if self.special_re else ()):
            if special.start() < start < special.end():  # never cut a special token's text
                start = special.start()
        return start, prompt == full[:start]

    def _final_closer(self, shape: tuple, full: str, marks: list) -> int | None:
        """For a conversation that ends on a reply the template leaves open (nothing but whitespace after
        it, as Apertus and GLM render training data): the special token that closes the same reply when a
        user turn follows (Apertus' <|assistant_end|>, GLM's <|user|>), to be added after it; else None."""
        roles, tools = split_shape(shape)
        if self.loss_on == "all" or not marks or not roles or roles[-1][0] != ASSISTANT or full[marks[-1].end():].strip():
            return None
        if int(marks[-1].group(1)) != len(roles) - 1:
            return None
        extended = roles + ((USER, False, None, False),) + (((TOOLS, False, tools, False),) if tools else ())
        longer = self.render(extended)
        last = [m for m in MARK.finditer(longer) if int(m.group(1)) == len(roles) - 1]
        special = self.special_re.search(longer, last[-1].end()) if last and self.special_re else None
        if special is None or longer[last[-1].end():special.start()].strip():
            return None
        token = special.group(0)
        print(f"prep: the chat template leaves the last reply of roles {shape_roles(shape)} open; it is closed with "
              f"{token}, as the template closes a reply that a user turn follows", file=sys.stderr)
        return self.tokenizer.convert_tokens_to_ids(token)

    def _check_system(self, shape: tuple, found: list, dropped: tuple) -> None:
        """--system-message error: refuse a template that drops or moves the system message."""
        roles, _ = split_shape(shape)
        if self.system_message != "error" or not roles or roles[0][0] != SYSTEM:
            return
        if SYSTEM in dropped or found[0] != (0, CONTENT):
            what = "drops" if SYSTEM in dropped else "moves"
            raise ChatFormatError(
                f"the chat template {what} the system message of roles {shape_roles(shape)} (--system-message error); "
                "use --system-message fold to prepend it to the first user turn, drop to leave it out, or keep")

    def _items(self, full: str, marks: list, cuts: list, strips: dict) -> list[tuple]:
        """The render as ("special", id, pos) | ("text", str, pos) | ("mark", (i, field, l, r), pos),
        text cut at `cuts` (every reply start and tool-call end)."""
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
        for special in (self.special_re.finditer(full, a, b) if self.special_re else ()):
            items.extend(_cut(full, pos, special.start(), cuts))
            items.append(("special", self.tokenizer.convert_tokens_to_ids(special.group(0)), special.start()))
            pos = special.end()
        items.extend(_cut(full, pos, b, cuts))
        return items

    def _supervision(self, shape: tuple, items: list[tuple], starts: dict, ends: dict) -> tuple[list[bool], list[int]]:
        """Per item, whether it is a label: from each reply's start through its last placeholder and
        up to and including the first special token after it (the end of turn), or for a reply that
        calls tools up to `ends` (prep/tool_turns.py). Also the ids that close plain replies."""
        if self.loss_on == "all":
            return [True] * len(items), []
        begins = {pos: k for k, pos in starts.items()}
        last = {k: max((i for i, (kind, value, _) in enumerate(items) if kind == "mark" and value[0] == k), default=None)
                for k in starts}
        supervised, closers = [], []
        active, closing = None, False
        for n, (kind, value, pos) in enumerate(items):
            if active in ends and pos >= ends[active]:  # a reply that calls tools hands over to the tool here
                active, closing = None, False
            if active is None and pos in begins:
                active = begins.pop(pos)
                closing = last[active] is None and active not in ends
            if kind == "mark" and active is not None and value[0] != active:
                raise self.unclosed(shape)
            supervised.append(active is not None)
            if kind == "special" and closing:
                closers.append(value)
                active, closing = None, False
            if active is not None and n == last[active] and active not in ends:
                closing = True
        if active is not None:
            raise self.unclosed(shape)
        return supervised, closers

    def unclosed(self, shape: tuple) -> ChatFormatError:
        return ChatFormatError(
            f"the chat template closes an assistant turn with no special token (roles {shape_roles(shape)}), so the "
            "loss mask cannot tell where a reply ends, nor generation where to stop; use a template that ends "
            "each turn with a special token (e.g. <|im_end|>, <|eot_id|>), or --loss-on all"
        )

    def _notice(self, shape: tuple, plan: _Plan) -> None:
        """One line on stderr for each shape the template renders other than as given."""
        if plan.dropped:
            fix = " (--system-message fold keeps it in the first user turn)" if SYSTEM in plan.dropped else ""
            left_out = ", ".join(f"{n} {role}" for role, n in collections.Counter(plan.dropped).items())
            print(f"prep: the chat template leaves out {left_out} of roles {shape_roles(shape)}: "
                  f"those are not trained on{fix}", file=sys.stderr)
        if plan.first_mismatch is not None:
            print(f"prep: the chat template's generation prompt for turn {plan.first_mismatch} of roles "
                  f"{shape_roles(shape)} differs from the conversation's text before that reply; masks follow the "
                  "conversation (recorded as prompt_matches_generation: false)", file=sys.stderr)



def _cut(full: str, a: int, b: int, cuts: list[int]) -> list[tuple]:
    """("text", piece, pos) for full[a:b], cut at the positions in `cuts`."""
    edges = [a] + [c for c in cuts if a < c < b] + [b]
    return [("text", full[x:y], x) for x, y in zip(edges, edges[1:]) if y > x]


def _escaped(options: dict, mark) -> dict:
    """The whitespace options as a placeholder written through `tojson` shows them."""
    if mark.group(0)[0] != "\\":
        return options
    return {name: json.dumps(text)[1:-1] for name, text in options.items()}

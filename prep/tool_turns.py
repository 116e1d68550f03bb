"""Tool turns in a chat template's render: whether a template can render them, and where the
model's part of a tool-calling reply ends.

A reply that calls tools is learned from its start through its calls up to the token that hands
the turn over to the tool; the tool's result is never learned. Templates hand over in three ways,
and the first that applies decides (render text after the calls' last argument, up to the tool
result):

1. the token that closes a plain reply (`<|im_end|>`, `<|eot_id|>`, Mistral's `</s>`, DeepSeek's
   end of sentence after its own call markers);
2. else the special tokens right after the calls, up to the token that opens a turn: gpt-oss'
   `<|call|>` (before `<|start|>`), GLM's `<|observation|>`, Cohere's `<|END_ACTION|><|END_OF_TURN_TOKEN|>`;
3. else (no special token before the result, or only the next turn's: Gemma 4 writes the result
   inside the model's own turn) the last added token of what the template renders for a conversation that ends on
   the calling reply (Gemma 4's `<|tool_response>`).

Hand-written: no tokenizer or template library says where a tool call ends; this reads it off
the template's own renders, as prep/chat_plan.py does for plain replies.
"""
from __future__ import annotations

import json
import os
import re

from prep.conversations import PLAIN, ChatFormatError, shape_roles, split_shape
from prep.records import TOOL

# A placeholder, as written or as a template's `tojson` escapes it (Llama 3.1's tool results); NUL never
# occurs in validated records.
MARK = re.compile("(?:\x00|\\\\u0000)(\\d+)([cr])(?:\x00|\\\\u0000)")
_ROLE_NAME = re.compile("assistant|model|chatbot|bot", re.IGNORECASE)  # how templates name the replying role


def check_tools(tokenizer, shape: tuple) -> None:
    """Tool calls, tool turns or tools given to a template that never mentions tools: refused."""
    roles, tools = split_shape(shape)
    uses = tools or any(role == TOOL or "tool_calls" in (extras or "") for role, _, extras, _ in roles)
    if uses and "tool" not in (tokenizer.chat_template or ""):
        raise ChatFormatError("the chat template has no tool support (it never mentions tools), so tool calls and "
                              "tool turns cannot be rendered; leave tool records out (or --skip-bad), or give "
                              "--chat-template FILE with a template that renders them")


def calls_of(shape: tuple, k: int) -> list[dict]:
    """The tool calls of message k of a shape (none for most messages)."""
    roles, _ = split_shape(shape)
    return json.loads(roles[k][2] or "{}").get("tool_calls", [])


def check_calls_rendered(shape: tuple, full: str, starts: dict) -> None:
    """Refuse a template that leaves an assistant's tool calls out of the render (it expects them
    spelled inside the content, say): they would be neither learned nor seen."""
    for k, start in starts.items():
        end = min((s for s in starts.values() if s > start), default=len(full))
        missing = [c["function"]["name"] for c in calls_of(shape, k) if c["function"]["name"] not in full[start:end]]
        if missing:
            raise ChatFormatError(f"the chat template does not render the tool calls of assistant turn {k} "
                                  f"({', '.join(missing)}) of roles {shape_roles(shape)}; use --chat-template FILE "
                                  "with a template that renders tool_calls")


def has_calls(messages: list[dict]) -> bool:
    return any(m.get("tool_calls") for m in messages)


# What a template may need of tool messages other than as given, tried in this order when a render fails:
# arguments as JSON text (OpenAI's wire format, for templates that add them to a string), and a calling
# reply's null content as "" (OpenAI sends null; templates that add `message.content` to a string fail on it).
ADAPTATIONS = ("arguments_as_text", "null_content_as_empty")


def more_adaptations(have: tuple) -> list[tuple]:
    """What to try adding to the adaptations `have`: nothing first, then the others alone, then together."""
    rest = [a for a in ADAPTATIONS if a not in have]
    return [()] + [(a,) for a in rest] + ([tuple(rest)] if len(rest) > 1 else [])


def adapt(messages: list[dict], adaptations: tuple) -> list[dict]:
    """The messages with `adaptations` (names from ADAPTATIONS) applied to the replies that call tools."""
    if not adaptations or not has_calls(messages):
        return messages
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = dict(m)
            if "arguments_as_text" in adaptations:
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(
                    c["function"].get("arguments", {}), ensure_ascii=False)}} for c in m["tool_calls"]]
            if "null_content_as_empty" in adaptations and m.get("content") is None:
                m["content"] = ""
        out.append(m)
    return out


def _needles(calls: list[dict]) -> list[str]:
    """What a rendered call must spell, in order: each call's name, then its arguments' string and number leaves."""
    out: list[str] = []

    def leaves(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                leaves(v)
        elif isinstance(value, list):
            for v in value:
                leaves(v)
        elif isinstance(value, str):
            out.append(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(str(value))

    for call in calls:
        out.append(call["function"]["name"])
        arguments = call["function"].get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        leaves(arguments)
    return [n for n in out if n]


def calls_end(full: str, start: int, limit: int, calls: list[dict]) -> int:
    """Where the rendered calls end in full[start:limit]: after the last needle, found in order
    (or, for a template that reorders arguments, after the furthest first occurrence)."""
    needles, pos = _needles(calls), start
    for needle in needles:
        at = full.find(needle, pos, limit)
        if at < 0:
            firsts = ((full.find(n, start, limit), n) for n in needles)
            return max((at + len(n) for at, n in firsts if at >= 0), default=start)
        pos = at + len(needle)
    return pos


def call_close(full: str, end: int, limit: int, special_re, plain_closers: set[str], opener: str | None,
               added_re, alone) -> int | None:
    """The end (in `full`) of the token that closes a tool-calling reply whose calls end at `end`, with
    the tool result at `limit`; None where no token does. `alone` is the render of the conversation
    ending on this reply (a function giving it, or None), for rule 3 (module docstring)."""
    specials = list(special_re.finditer(full, end, limit)) if special_re else []
    closer = next((s for s in specials if s.group(0) in plain_closers), None)
    if closer is not None:
        return closer.end()
    run: list = []
    for s in specials:
        if s.group(0) == opener or run and full[run[-1].end():s.start()].strip():
            break
        run.append(s)
    if run:
        return run[-1].end()
    text = alone() if added_re is not None else None
    if text is None:
        return None
    own = min(len(os.path.commonprefix([text, full])), limit)
    tokens = [t.end() for t in added_re.finditer(full, end, own) if t.end() <= own]
    return tokens[-1] if tokens else None


def added_tokens_re(tokenizer):
    """Every added token, special or not (Gemma 4's `<|tool_response>` is not marked special), longest first."""
    tokens = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.content}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def turn_opener(planner) -> str | None:
    """The special token that opens an assistant turn (<|start|>, <|begin|>, <|START_OF_TURN_TOKEN|>): the
    first one of what the generation prompt adds to a conversation of one user turn."""
    try:
        before, prompt = planner.render(PLAIN[:1]), planner.render(PLAIN, upto=1)
    except ChatFormatError:
        return None
    if planner.special_re is None:
        return None
    opens = planner.special_re.search(prompt[len(before):] if prompt.startswith(before) else "")
    if opens:
        return opens.group(0)
    # A template that already opens the reply for one user turn (Command R7B): the special token before the
    # role's name (<|start_header_id|>assistant, <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>).
    tail = prompt[max([m.end() for m in MARK.finditer(prompt)], default=0):]
    specials = list(planner.special_re.finditer(tail))
    for i, special in enumerate(specials):
        after = tail[special.end():specials[i + 1].start() if i + 1 < len(specials) else len(tail)]
        if _ROLE_NAME.search(special.group(0)):
            return specials[i - 1].group(0) if i else None
        if _ROLE_NAME.search(after):
            return special.group(0)
    return None


def call_ends(planner, shape: tuple, full: str, marks: list, starts: dict) -> dict[int, int]:
    """For each reply that calls tools: where in `full` its supervision ends (the module docstring's rules)."""
    roles, tools = split_shape(shape)
    ends = {}
    for k, start in starts.items():
        calls = calls_of(shape, k)
        if not calls or planner.loss_on == "all":
            continue
        limit = min([m.start() for m in marks if m.start() >= start and int(m.group(1)) != k]
                    + [s for s in starts.values() if s > start] + [len(full)])
        end = max([calls_end(full, start, limit, calls)]
                  + [m.end() for m in marks if int(m.group(1)) == k])

        def alone(k=k):  # the conversation rendered up to and with this reply
            try:
                return planner.render(shape[:k + 1] + (shape[-1:] if tools else ()))
            except ChatFormatError:
                return None
        close = call_close(full, end, limit, planner.special_re, {planner.spelling[c] for c in planner.closers},
                           planner.opener, planner.added_re, alone)
        if close is None:
            raise planner.unclosed(shape)
        ends[k] = close
    return ends

"""Conversations as prep holds them, and their shapes: what a chat-template plan depends on.

A conversation is a tuple of messages; a message is `(role, content)`, `(role, content,
reasoning)` or `(role, content, reasoning, extras)`, where `extras` is the JSON of its other
fields (an assistant's `tool_calls`, a tool turn's `tool_call_id` and `name`, a tool-call turn's
null `content`). Tuples keep a batch of them light, and hashable where shapes are.

    >>> shape((("user", "Hi"), ("assistant", "Yo", "thinking")))
    (('user', False, None, False), ('assistant', True, None, False))
    >>> prepare((("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo")), "fold")
    (('user', 'Be brief.\\n\\nHi'), ('assistant', 'Yo'))
"""
from __future__ import annotations

import json

from prep.records import ASSISTANT, SYSTEM, USER
from sftcli import UserError

TOOLS = "\x00tools"  # the shape's last entry, when the conversation has tools
# The shape of a one-turn conversation: its plan says which token ends a reply.
PLAIN = ((USER, False, None, False), (ASSISTANT, False, None, False))


class ChatFormatError(UserError):
    """The chat template cannot give exact loss-mask boundaries."""


def message_fields(message: tuple) -> tuple[str, str, str | None]:
    """(role, content, reasoning or None) of a message."""
    return message[0], message[1], message[2] if len(message) > 2 else None


def message_extras(message: tuple) -> dict:
    """A message's other fields (an assistant's `tool_calls`; a tool turn's `tool_call_id`, `name`)."""
    return json.loads(message[3]) if len(message) > 3 and message[3] else {}


def message_dict(message: tuple) -> dict:
    """The message as a chat template reads it."""
    role, content, reasoning = message_fields(message)
    return {"role": role, "content": content, **({"reasoning_content": reasoning} if reasoning is not None else {}),
            **message_extras(message)}


def prepare(conversation: tuple, system_message: str) -> tuple:
    """The conversation after --system-message: fold prepends a leading system message to the
    first user turn; drop removes system messages; keep and error leave it."""
    if system_message in ("keep", "error"):
        return conversation
    if system_message == "drop":
        return tuple(m for m in conversation if m[0] != SYSTEM)
    if (system_message == "fold" and len(conversation) > 1 and conversation[0][0] == SYSTEM
            and conversation[1][0] == USER):
        return ((USER, f"{conversation[0][1]}\n\n{conversation[1][1]}"),) + tuple(conversation[2:])
    return tuple(conversation)


def shape(conversation: tuple, tools: str | None = None) -> tuple:
    """What the plan depends on: each message's role, whether it has reasoning, its other fields
    (tool calls are rendered by the template as they are), whether it is a reply that only calls
    tools, and the conversation's tools."""
    if all(len(m) == 2 for m in conversation):  # the common case, once per record: keep it cheap
        entries = tuple((m[0], False, None, False) for m in conversation)
    else:
        entries = tuple((m[0], len(m) > 2 and m[2] is not None, m[3] if len(m) > 3 else None,
                         m[0] == ASSISTANT and m[1] == "" and len(m) > 3 and "tool_calls" in (m[3] or ""))
                        for m in conversation)
    return entries + ((TOOLS, False, tools, False),) if tools else entries


def split_shape(shape: tuple) -> tuple[tuple, str | None]:
    """(the messages' (role, has_reasoning, extras, call_only) entries, the tools' JSON or None) of a shape."""
    if shape and shape[-1][0] == TOOLS:
        return shape[:-1], shape[-1][2]
    return shape, None


def shape_roles(shape: tuple) -> tuple:
    return tuple(entry[0] for entry in split_shape(shape)[0])

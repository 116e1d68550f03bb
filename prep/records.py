"""Record shapes: check every record before it reaches the tokenizer, and turn it into a conversation.

`read_conversations(data)` reads one or several `--data` values (see `prep.readers`) in
the order given and yields batches of `Conversation`s, each a tuple of (role, content)
turns ((role, content, reasoning) where a reply has reasoning). Three record shapes are accepted; unknown extra fields are ignored:

    Alpaca    {"instruction": str, "input": str (optional), "output": str}
              -> (("user", user_turn(prompt_format, instruction, input)), ("assistant", output))
    chat      {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
              (an assistant message may carry "reasoning_content" or "thinking": str)
    ShareGPT  {"conversations": [{"from": "system"|"human"|"user"|"gpt"|"assistant", "value": str}, ...]}
              -> the turns as given; there must be an assistant turn and it must come last

Text is passed through untouched: whitespace inside fields is kept, and strings
such as "<|im_start|>" are ordinary text here (only the tokenizer stage may give
them meaning, and it must not). Only the emptiness checks look at `.strip()`.

A bad record raises `DataError` naming the file, the record (and line), the
field and the fix. With `skip_bad=True` bad records are dropped and counted
per reason (the keys of `REASONS`) so the manifest can report them. Problems
with a file as a whole (missing, wrong type, empty, hub unreachable) always
raise, since no record could be read past them.
"""
from __future__ import annotations

import bisect
import collections
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

from prep.hub import dataset_of, hub_records, preflight
from prep.readers import (Bad, DataError, Line, Source, json_records, json_type, jsonl_records, parse_line,
                          record_line, resolve)
from prep.tables import csv_records, parquet_records
from shards.format import sha256_file
from shards.prompts import user_turn

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"
ROLES = (SYSTEM, USER, ASSISTANT, TOOL)
# ShareGPT's speaker names, as TRL, Axolotl and LLaMA-Factory read them.
REASONING_KEYS = ("reasoning_content", "thinking")
TOOL_MESSAGE_KEYS = ("tool_call_id", "name")  # what a tool turn may say of the call it answers  # an assistant turn's reasoning, as transformers reads it
SHAREGPT_ROLES = {"system": SYSTEM, "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT,
                  "function_call": ASSISTANT, "observation": TOOL, "tool": TOOL}

# Keys of `bad_counts`: why a record was skipped under skip_bad.
REASONS = (
    "malformed_json",
    "not_an_object",
    "not_a_list",
    "missing_field",
    "not_a_string",
    "empty_field",
    "unknown_role",
    "no_assistant_turn",
    "ends_on_user_turn",
    "undecodable_bytes",
    "nul_character",
)
_SKIP_HINT = (
    "Fix the record, or pass --skip-bad to skip bad records (they are counted in the manifest)."
)


@dataclass(frozen=True)
class Conversation:
    """One training example, in source order.

    `index` is the 0-based record index over all sources read, in order (for .jsonl the
    index among non-blank lines); `line` is the 1-based line of the record for .jsonl and
    None for every other format; `alpaca` tells whether the user turn was rendered from
    an Alpaca record (so the shard set's prompt format applies to it).
    """

    index: int
    line: int | None
    messages: tuple[tuple, ...]
    alpaca: bool = False
    tools: str | None = None  # the record's tool schemas, as JSON


class Pending(NamedTuple):  # a tuple: one is made for every record read, and a frozen dataclass costs 3x
    """A record read but not yet checked (`read_conversations(..., deferred=True)`): prep's workers
    turn it into a conversation (`decode`), so that the driver reading every record does no more than
    read; `ConversationReader.reject` then stops at, or counts, the bad ones."""

    index: int
    line: int | None
    record: Any  # as read, or a .jsonl `Line` still to parse


def decode(record: Any, prompt_format: str = "alpaca") -> tuple[tuple[tuple, ...], bool, str | None]:
    """A record as read -> (its turns, whether it was an Alpaca record, its tools as JSON); raises `Bad`."""
    if isinstance(record, Line):
        record = parse_line(record)
    if isinstance(record, Bad):
        raise record
    messages, alpaca = conversation(record, prompt_format)
    return messages, alpaca, tools_of(record)  # a bad `tools` field is a bad record too


def read_conversations(
    data: str | Sequence[str],
    *,
    split: str = "train",
    skip_bad: bool = False,
    bad_counts: collections.Counter | None = None,
    batch_size: int = 1000,
    prompt_format: str = "alpaca",
    deferred: bool = False,
) -> "ConversationReader":
    """Yield the sources' conversations in lists of at most `batch_size`.

    Raises DataError on the first bad record, or, with `skip_bad`, counts it in
    `bad_counts[reason]` and goes on. File-level problems raise either way, as
    does a source whose records were all bad. `split` only applies to hub ids.
    `deferred`: lists of `Pending` records instead, every record read, none checked: the caller
    decodes them (`decode`), hands the bad ones to `reject`, and calls `finish` at the end.

    >>> batch = next(read_conversations("sample", batch_size=2))
    >>> len(batch), batch[0].index, [role for role, _ in batch[0].messages]
    (2, 0, ['user', 'assistant'])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Resolve now, not on first next(): a wrong path or an unreachable hub fails where it was passed.
    sources = [preflight(source, split) for source in resolve_all(data)]
    return ConversationReader(sources, split, skip_bad, bad_counts, batch_size, prompt_format, deferred)


class ConversationReader:
    """The batches of `read_conversations` (an iterator), plus where each record came from."""

    def __init__(self, sources: list[Source], split: str, skip_bad: bool = False,
                 bad_counts: collections.Counter | None = None, batch_size: int = 1000,
                 prompt_format: str = "alpaca", deferred: bool = False) -> None:
        self.sources, self.split = sources, split
        self.skip_bad, self.bad_counts = skip_bad, bad_counts
        self._starts: list[int] = []  # global index of each source's first record, as they are reached
        self._totals: list[int] = []  # records of each source read so far
        self._bad: list[collections.Counter] = []  # each source's bad records by reason, for the all-bad message
        self._batches = self._read(batch_size, prompt_format, deferred)

    def __iter__(self) -> "ConversationReader":
        return self

    def __next__(self) -> list[Conversation]:
        return next(self._batches)

    def _source(self, index: int) -> int:
        return bisect.bisect_right(self._starts, index) - 1

    def locate(self, index: int) -> str:
        """"FILE: record K" for the global record `index` (one read by now), for messages."""
        k = self._source(index)
        return f"{self.sources[k].name}: record {index - self._starts[k]}"

    def fingerprints(self) -> list[dict[str, str]]:
        """[{source, fingerprint}] for every file (sha256 of its bytes) or hub dataset read."""
        return [{"source": s.name, "fingerprint": fingerprint(s, self.split)} for s in self.sources]

    def reject(self, index: int, line: int | None, bad: Bad) -> None:
        """A bad record (global `index`): stop with the message naming it, or count it under skip_bad."""
        k = self._source(index)
        source = self.sources[k]
        if not self.skip_bad:
            raise DataError(f"{source.name}: {_where(source, index - self._starts[k], line)}: {bad.detail}. "
                            f"{_SKIP_HINT}", reason=bad.reason) from None
        self._bad[k][bad.reason] += 1
        if self.bad_counts is not None:
            self.bad_counts[bad.reason] += 1

    def finish(self, k: int | None = None) -> None:
        """A source (each, by default) read to its end: refuse it if it held no good record."""
        for k in range(len(self.sources)) if k is None else [k]:
            total, bad = self._totals[k], self._bad[k]
            if total == 0:  # every format checks this itself; kept so no source yields silently nothing
                raise DataError(f"{self.sources[k].name}: zero records.", reason="no_records")
            if sum(bad.values()) == total:
                summary = ", ".join(f"{reason}: {n}" for reason, n in bad.most_common())
                raise DataError(
                    f"{self.sources[k].name}: all {total} records were bad ({summary}); nothing is left to train "
                    "on. Run without --skip-bad to see the first error.",
                    reason="all_bad",
                )

    def _read(self, batch_size: int, prompt_format: str, deferred: bool) -> Iterator[list]:
        batch: list = []
        offset = 0  # records of the sources before this one: indices run on across files
        for k, source in enumerate(self.sources):
            self._starts.append(offset)
            self._totals.append(0)
            self._bad.append(collections.Counter())
            for index, line, record in records(source, self.split, batch_size, parse=not deferred):
                self._totals[k] += 1
                if deferred:
                    batch.append(Pending(offset + index, line, record))
                else:
                    try:
                        messages, alpaca, tools = decode(record, prompt_format)
                    except Bad as bad:
                        self.reject(offset + index, line, bad)
                        continue
                    batch.append(Conversation(offset + index, line, messages, alpaca, tools))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if not deferred:
                self.finish(k)
            offset += self._totals[k]
        if batch:
            yield batch


def resolve_all(data: str | Sequence[str]) -> list[Source]:
    """Every source of one or several `--data` values, in the order given."""
    return [source for value in ([data] if isinstance(data, str) else data) for source in resolve(value)]


def source_fingerprint(data: str | Sequence[str], *, split: str = "train") -> str:
    """One fingerprint for the whole input: a single source's own, else the sha256 of theirs in order.

    Local files (and the sample): the sha256 hex digest of the file's bytes.
    Hub ids: "hub:{id}:{split}:{fingerprint}", from the loaded dataset's `_fingerprint`.
    """
    return combined_fingerprint(ConversationReader(resolve_all(data), split).fingerprints())


def combined_fingerprint(sources: list[dict[str, str]]) -> str:
    """A single source's fingerprint, else the sha256 of all of them in order."""
    prints = [s["fingerprint"] for s in sources]
    return prints[0] if len(prints) == 1 else hashlib.sha256("\n".join(prints).encode()).hexdigest()


def fingerprint(source: Source, split: str) -> str:
    """sha256 of a file's bytes; "hub:{id}:{split}:{fingerprint}" for a hub dataset (loads it)."""
    if source.path is None:
        return f"hub:{source.name}:{split}:{dataset_of(source, split)._fingerprint}"
    return sha256_file(source.path)


def records(source: Source, split: str, batch_size: int,
            parse: bool = True) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line, record or Bad) for every record of one source; `line` is the 1-based line for
    .jsonl, else None. `parse` False: .jsonl records come as `Line`s, to parse later."""
    if source.kind == "jsonl":
        return jsonl_records(source, parse)
    if source.kind == "json":
        return json_records(source)
    if source.kind == "parquet":
        return parquet_records(source, batch_size)
    if source.kind == "csv":
        return csv_records(source, batch_size)
    return hub_records(source, split, batch_size)


def _where(source: Source, index: int, line: int | None) -> str:
    if source.kind == "jsonl":
        return f"line {line} (record {index})"
    start = record_line(source, index)
    return f"record {index} (starts on line {start})" if start is not None else f"record {index}"


def conversation(record: Any, prompt_format: str = "alpaca") -> tuple[tuple[tuple, ...], bool]:
    """The record's turns, and whether it was an Alpaca record; raises `Bad` naming the field."""
    if not isinstance(record, dict):
        raise Bad("not_an_object", f"the record is {json_type(record)}, expected a JSON object")
    if "messages" in record:
        return _turns(record["messages"], "messages", "role", "content", {r: r for r in ROLES}), False
    if "conversations" in record:
        return _turns(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES), False
    if "instruction" not in record:
        raise Bad(
            "missing_field",
            "field 'instruction' is missing (expected an Alpaca record with 'instruction' and "
            "'output', a chat record with 'messages', or a ShareGPT record with 'conversations')",
        )
    instruction = _text(record["instruction"], "instruction", nonempty=True)
    # 'input' is optional; null is how table formats spell an absent value.
    raw_input = record.get("input")
    input_text = "" if raw_input is None else _text(raw_input, "input", nonempty=False)
    if "output" not in record:
        raise Bad("missing_field", "field 'output' is missing, expected a non-empty string")
    output = _text(record["output"], "output", nonempty=True)
    return ((USER, user_turn(prompt_format, instruction, input_text)), (ASSISTANT, output)), True


def _turns(turns: Any, name: str, role_key: str, content_key: str,
           roles: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A chat (role/content) or ShareGPT (from/value) turn list, roles mapped to ours."""
    if not isinstance(turns, list):
        raise Bad(
            "not_a_list",
            f"field '{name}' is {json_type(turns)}, expected a list of {{{role_key}, {content_key}}} objects",
        )
    messages: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        field = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise Bad(
                "not_an_object",
                f"field '{field}' is {json_type(turn)}, expected an object with '{role_key}' and '{content_key}'",
            )
        for key in (role_key, content_key):
            if key not in turn:
                raise Bad("missing_field", f"field '{field}.{key}' is missing")
        given = _text(turn[role_key], f"{field}.{role_key}", nonempty=False)
        if given not in roles:
            hint = " (ShareGPT's 'human'/'gpt' are 'user'/'assistant')" if given in SHAREGPT_ROLES else ""
            raise Bad(
                "unknown_role",
                f"field '{field}.{role_key}' is {given!r}, expected one of {', '.join(map(repr, roles))}{hint}",
            )
        role = roles[given]
        calls = _tool_calls(turn, field, given, content_key)
        # An empty user or system turn is odd but trainable; an empty reply is not, unless it calls a tool.
        if calls is not None and given == "function_call":
            content = ""
        elif calls is not None and turn.get(content_key) is None:
            content = ""
        else:
            content = _text(turn[content_key], f"{field}.{content_key}", nonempty=role == ASSISTANT and calls is None)
        reasoning = _reasoning(turn, field, role)
        extras = {"tool_calls": calls} if calls is not None else {}
        if calls is not None and (given == "function_call" or turn.get(content_key) is None):
            extras["content"] = None  # as the record has it: templates test `content is none` (DeepSeek) or falsiness
        extras.update({k: turn[k] for k in TOOL_MESSAGE_KEYS if role == TOOL and isinstance(turn.get(k), str)})
        message = (role, content, reasoning, json.dumps(extras)) if extras else (role, content, reasoning)
        messages.append(message if len(message) > 3 or reasoning is not None else (role, content))
    if not any(m[0] == ASSISTANT for m in messages):
        raise Bad(
            "no_assistant_turn",
            f"field '{name}' has no assistant turn, so there is nothing to learn; add the reply",
        )
    if messages[-1][0] != ASSISTANT:
        raise Bad(
            "ends_on_user_turn",
            f"field '{name}' ends on a {messages[-1][0]} turn ({name}[{len(messages) - 1}]); "
            "the last turn must be the assistant's reply: add it or drop the trailing turn",
        )
    return tuple(messages)


def _tool_calls(turn: dict, field: str, given: str, content_key: str) -> list | None:
    """An assistant turn's tool calls in the shape chat templates read ([{type, function: {name,
    arguments: object}}]); ShareGPT's function_call turn is one call, its value {name, arguments}."""
    if given == "function_call":
        raw = turn.get(content_key)
        try:
            call = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as e:
            raise Bad("not_a_string", f"field '{field}.{content_key}' of a function_call turn is not JSON ({e})") from None
        calls, where = ([call] if isinstance(call, dict) else call), f"{field}.{content_key}"
    elif turn.get("tool_calls") is not None:
        calls, where = turn["tool_calls"], f"{field}.tool_calls"
    else:
        return None
    if not isinstance(calls, list) or not calls:
        raise Bad("not_a_list", f"field '{where}' is {json_type(calls)}, expected a non-empty list of tool calls")
    return [_tool_call(call, f"{where}[{i}]") for i, call in enumerate(calls)]


def _tool_call(call: Any, where: str) -> dict:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise Bad("missing_field", f"field '{where}' needs a function name: {{\"name\": ..., \"arguments\": {{...}}}}")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise Bad("not_a_string", f"field '{where}.arguments' is a string that is not JSON ({e})") from None
    if not isinstance(arguments, dict):
        raise Bad("not_an_object", f"field '{where}.arguments' is {json_type(arguments)}, expected an object")
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def tools_of(record: Any) -> str | None:
    """A chat or ShareGPT record's `tools` (a list of JSON schemas, or a JSON string of one) as JSON."""
    raw = record.get("tools") if isinstance(record, dict) and "instruction" not in record else None
    if raw is None or raw == "":
        return None
    try:
        tools = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise Bad("not_a_list", f"field 'tools' is a string that is not JSON ({e})") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise Bad("not_a_list", f"field 'tools' is {json_type(tools)}, expected a list of tool JSON schemas")
    return json.dumps(tools) if tools else None


def _reasoning(turn: dict, field: str, role: str) -> str | None:
    """An assistant turn's reasoning (`reasoning_content`, also read as `thinking`), or None.
    Templates that render it (Qwen3, DeepSeek R1, gpt-oss) get it learned as part of the reply."""
    key = next((k for k in REASONING_KEYS if turn.get(k) is not None), None)
    if key is None:
        return None
    if role != ASSISTANT:
        raise Bad("unknown_role", f"field '{field}.{key}' is on a {role} turn; only assistant turns carry reasoning")
    return _text(turn[key], f"{field}.{key}", nonempty=False)


def _text(value: Any, field: str, *, nonempty: bool) -> str:
    """`value` if it is an acceptable string for `field`; never altered."""
    if value is None:
        raise Bad("not_a_string", f"field '{field}' is null, expected a non-empty string")
    if not isinstance(value, str):
        raise Bad("not_a_string", f"field '{field}' is {json_type(value)}, expected a string")
    nul = value.find("\x00")
    if nul >= 0:
        # A NUL is a broken export, and tokenizers and C-string tools disagree on it.
        raise Bad(
            "nul_character",
            f"field '{field}' contains a NUL character (\\x00) at position {nul}; remove it",
        )
    if nonempty and not value.strip():
        what = "empty" if value == "" else "whitespace only"
        raise Bad("empty_field", f"field '{field}' is {what}, expected a non-empty string")
    return value

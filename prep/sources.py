"""Read instruction data and check every record before it reaches the tokenizer.

`read_conversations(data)` turns a data source into batches of `Conversation`s,
each a tuple of (role, content) turns. A source is one of:

    "sample"                 the embedded 999-record Alpaca sample (prep/data/alpaca_en_demo.json)
    path/to/file.jsonl       one JSON record per line
    path/to/file.json        one JSON array of records
    path/to/file.parquet     a table with the record fields as columns
    path/to/file.csv         likewise, with a header row
    owner/name               anything else: a Hugging Face hub dataset id

Two record shapes are accepted; unknown extra fields are ignored:

    Alpaca  {"instruction": str, "input": str (optional), "output": str}
            -> (("user", alpaca_prompt(instruction, input)), ("assistant", output))
    chat    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
            -> the turns as given; there must be an assistant turn and it must come last

Text is passed through untouched: whitespace inside fields is kept, and strings
such as "<|im_start|>" are ordinary text here (only the tokenizer stage may give
them meaning, and it must not). Only the emptiness checks look at `.strip()`.

A bad record raises `DataError` naming the file, the record (and line), the
field and the fix. With `skip_bad=True` bad records are dropped and counted
per reason (the keys of `REASONS`) so the manifest can report them. Problems
with the file as a whole (missing, wrong type, empty, hub unreachable) always
raise, since no record could be read past them.

Memory grows with one batch, not with the data: .jsonl is read line by line,
.parquet and .csv through pyarrow's batch readers, hub datasets by iterating
their memory-mapped Arrow table in batches. The one exception is .json, whose
single array is read whole (see `_json_records`).
"""
from __future__ import annotations

import collections
import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from sftcli import UserError

SAMPLE = "sample"
SAMPLE_PATH = Path(__file__).parent / "data" / "alpaca_en_demo.json"

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)

SEED_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n"
)

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

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_FIELDS = ("instruction", "input", "output", "messages")
_BOM = b"\xef\xbb\xbf"
_SKIP_HINT = (
    "Fix the record, or pass --skip-bad to skip bad records (they are counted in the manifest)."
)
_OFFLINE_HINT = "for offline work use the embedded sample: --data sample (make: DATA=sample)"
# What the hub accepts as a repo id; anything else cannot be a hub dataset.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# Extensions that mean "a file the user forgot we cannot read", so a missing
# `data.txt` gets "unknown file type" rather than a confusing hub lookup.
_FILE_LIKE = {
    ".txt", ".tsv", ".xls", ".xlsx", ".ndjson", ".gz", ".bz2", ".xz", ".zst", ".zip",
    ".tar", ".arrow", ".feather", ".yaml", ".yml", ".xml", ".md", ".html", ".pkl", ".pickle",
}
_JSON_WS = re.compile(r"[ \t\n\r]*")


class DataError(UserError):
    """A bad input record or file; message names file, record, field and fix.

    `reason` is one of `REASONS` for a record-level problem, or a file-level key
    such as "file_not_found", "empty_file", "no_records" or "hub_unreachable".
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Conversation:
    """One training example, in source order.

    `index` is the 0-based record index in the source (for .jsonl the index
    among non-blank lines); `line` is the 1-based line of the record for .jsonl
    and None for every other format.
    """

    index: int
    line: int | None
    messages: tuple[tuple[str, str], ...]


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The user turn for an Alpaca record, exactly as the seed wrote it.

    >>> alpaca_prompt("Give three tips for staying healthy", "").removeprefix(SEED_PROMPT)
    'Give three tips for staying healthy'
    >>> alpaca_prompt("Translate", "bonjour").removeprefix(SEED_PROMPT)
    'Translate. Here are the inputs: bonjour'
    """
    # The seed tests `input != ""`, not `.strip()`: a whitespace-only input is
    # still appended, so the prompts (and the token counts) match the seed's.
    if input_text != "":
        return SEED_PROMPT + f"{instruction}. Here are the inputs: {input_text}"
    return SEED_PROMPT + instruction


def read_conversations(
    data: str,
    *,
    split: str = "train",
    skip_bad: bool = False,
    bad_counts: collections.Counter | None = None,
    batch_size: int = 1000,
) -> Iterator[list[Conversation]]:
    """Yield the source's conversations in lists of at most `batch_size`.

    Raises DataError on the first bad record, or, with `skip_bad`, counts it in
    `bad_counts[reason]` and goes on. File-level problems raise either way, as
    does a source whose records were all bad. `split` only applies to hub ids.

    >>> batch = next(read_conversations(SAMPLE, batch_size=2))
    >>> len(batch), batch[0].index, [role for role, _ in batch[0].messages]
    (2, 0, ['user', 'assistant'])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # Resolve now, not on first next(): a wrong path fails where it was passed.
    source = _resolve(data)
    return _read(source, split, skip_bad, bad_counts, batch_size)


def source_fingerprint(data: str, *, split: str = "train") -> str:
    """Identify the exact input, so a manifest can tell whether shards are stale.

    Local files (and the sample): the sha256 hex digest of the file's bytes.
    Hub ids: "hub:{id}:{split}:{fingerprint}", from the loaded dataset's
    `_fingerprint` (loading is lazy: only done when this is called).
    """
    source = _resolve(data)
    if source.path is None:
        dataset = _load_hub(source.name, split)
        return f"hub:{source.name}:{split}:{dataset._fingerprint}"
    digest = hashlib.sha256()
    with open(source.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "json" | "jsonl" | "parquet" | "csv" | "hub"
    name: str  # what messages call it: the path as given, or the hub id
    path: Path | None  # None for hub datasets


class _Bad(Exception):
    """A record-level problem, before the location is known to the message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _resolve(data: str) -> _Source:
    if data == SAMPLE:
        return _Source("json", f"{SAMPLE} ({SAMPLE_PATH})", SAMPLE_PATH)
    path = Path(data).expanduser()
    suffix = path.suffix.lower()
    kind = SUFFIXES.get(suffix)
    if kind is not None:
        if path.is_dir():
            raise DataError(f"{data}: is a directory, expected a {suffix} file.", reason="not_a_file")
        if not path.is_file():
            raise DataError(
                f"{data}: file not found (relative paths start at {Path.cwd()}). "
                f"Check the path, or {_OFFLINE_HINT}.",
                reason="file_not_found",
            )
        return _Source(kind, data, path)
    known = ", ".join(SUFFIXES)
    if path.is_dir():
        raise DataError(
            f"{data}: is a directory; pass one {known} file, a hub dataset id, or '{SAMPLE}'.",
            reason="not_a_file",
        )
    if path.exists() or suffix in _FILE_LIKE:
        raise DataError(
            f"{data}: unknown file type {suffix or '(no extension)'}; expected one of {known} "
            f"(convert the file, e.g. to .jsonl with one record per line), a hub dataset id, "
            f"or '{SAMPLE}'.",
            reason="unknown_extension",
        )
    if not _HUB_ID.fullmatch(data):
        raise DataError(
            f"{data}: no such file, and not a Hugging Face hub dataset id (owner/name). "
            f"Pass an existing {known} file, a hub id such as yahma/alpaca-cleaned, or '{SAMPLE}'.",
            reason="file_not_found",
        )
    return _Source("hub", data, None)


def _records(source: _Source, split: str, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line, record or _Bad) for every record; line as in `_where`."""
    if source.kind == "jsonl":
        return _jsonl_records(source)
    if source.kind == "json":
        return _json_records(source)
    if source.kind == "parquet":
        return _parquet_records(source, batch_size)
    if source.kind == "csv":
        return _csv_records(source, batch_size)
    return _hub_records(source, split, batch_size)


def _jsonl_records(source: _Source) -> Iterator[tuple[int, int | None, Any]]:
    assert source.path is not None
    index = 0
    # Binary mode: lines split on b"\n" only. Text mode's universal newlines
    # would also split a record at a raw U+2028 or U+0085 inside a string, and
    # decoding per line turns one bad byte into one bad record, not a dead file.
    with open(source.path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start = 0
            if lineno == 1 and raw.startswith(_BOM):
                start = len(_BOM)
            raw = raw[start:].rstrip(b"\r\n")  # CRLF files: the \r is line ending, not data
            if not raw.strip():
                continue  # blank lines (a trailing newline, a separator) are not records
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield index, lineno, _Bad(
                    "undecodable_bytes",
                    f"invalid UTF-8 byte 0x{raw[e.start]:02x} at byte {start + e.start + 1} of the line; "
                    "re-save the file as UTF-8",
                )
            else:
                try:
                    yield index, lineno, json.loads(text)
                except json.JSONDecodeError as e:
                    hint = "each record must be one complete JSON object on one line"
                    if index == 0 and text.lstrip().startswith("["):
                        hint = "this looks like a JSON array; name the file .json"
                    yield index, lineno, _Bad(
                        "malformed_json", f"malformed JSON at column {e.colno}: {e.msg} ({hint})"
                    )
            index += 1
    if index == 0:
        raise DataError(
            f"{source.name}: empty file (no records). Put one JSON record per line, or {_OFFLINE_HINT}.",
            reason="empty_file",
        )


def _json_records(source: _Source) -> Iterator[tuple[int, int | None, Any]]:
    """Records of a .json array; `line` is where each record starts (for messages only).

    The stdlib cannot stream a JSON array, so the file's text is loaded whole.
    That is the price of .json; large data sets belong in .jsonl or .parquet.
    The array is still decoded one element at a time, so a syntax error names
    the record it is in, and only one batch of records exists as objects.
    """
    assert source.path is not None
    raw = source.path.read_bytes()
    bom = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{source.name}: invalid UTF-8 byte 0x{raw[offset]:02x} at byte offset {offset} "
            f"(line {line}); a .json file is decoded as a whole, so "
            "re-save it as UTF-8 (or convert it to .jsonl, where --skip-bad can skip a bad line).",
            reason="undecodable_bytes",
        ) from None
    del raw  # keep only the text while records are produced

    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, 0).end()
    if pos == len(text):
        raise DataError(
            f"{source.name}: empty file (no records). Expected a JSON array of records, or {_OFFLINE_HINT}.",
            reason="empty_file",
        )

    def malformed(at: int, msg: str, index: int) -> DataError:
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        where = f"record {index} (line {line}, column {column})" if index >= 0 else f"line {line}, column {column}"
        return DataError(
            f"{source.name}: {where}: malformed JSON: {msg}. "
            "Fix the JSON (a .json file must parse as a whole); --skip-bad cannot skip this.",
            reason="malformed_json",
        )

    if text[pos] != "[":
        try:
            top, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise malformed(e.pos, e.msg, -1) from None
        raise DataError(
            f"{source.name}: the top level is {_json_type(top)}: expected a JSON array of records; "
            "for one record per line use .jsonl.",
            reason="not_a_list",
        )
    pos = _JSON_WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        raise DataError(
            f"{source.name}: the JSON array is empty (no records). Add records, or {_OFFLINE_HINT}.",
            reason="no_records",
        )
    index, line, counted_to = 0, 1, 0
    while True:
        line += text.count("\n", counted_to, pos)  # incremental: O(file), not O(records * file)
        counted_to = pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise malformed(e.pos, e.msg, index) from None
        yield index, line, record
        index += 1
        pos = _JSON_WS.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _JSON_WS.match(text, pos + 1).end()
            if text.startswith("]", pos):
                raise malformed(pos, "trailing comma before ']'", index)
            continue
        if text.startswith("]", pos):
            end = _JSON_WS.match(text, pos + 1).end()
            if end != len(text):
                raise malformed(end, "extra data after the closing ']'", index)
            return
        raise malformed(pos, "expected ',' or ']' after a record", index)


def _columns(source: _Source, names: Iterable[str]) -> list[str]:
    """The record columns a table source provides; a table without them is unusable."""
    names = list(names)
    found = [n for n in _FIELDS if n in names]
    if "messages" not in found and not {"instruction", "output"} <= set(found):
        raise DataError(
            f"{source.name}: no usable columns (found: {', '.join(names) or 'none'}); expected "
            "Alpaca columns instruction, input (optional), output, or a chat column messages. "
            "Rename the columns.",
            reason="missing_field",
        )
    return found


def _parquet_records(source: _Source, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert source.path is not None
    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{source.name}: not a readable Parquet file ({_first_line(e)}); re-export it "
            "(e.g. pandas DataFrame.to_parquet) or use .jsonl.",
            reason="unreadable_file",
        ) from e
    with parquet:
        if parquet.metadata.num_rows == 0:
            raise DataError(f"{source.name}: the table has zero rows (no records).", reason="no_records")
        # Read only the record columns: extra columns can be large and are ignored anyway.
        columns = _columns(source, parquet.schema_arrow.names)
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                for record in batch.to_pylist():
                    yield index, None, record
                    index += 1
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"{source.name}: cannot read past record {index}: {_first_line(e)}. "
                "The file is damaged; re-export it.",
                reason="unreadable_file",
            ) from e


def _csv_records(source: _Source, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    assert source.path is not None
    # The header is read first so every column can be typed as bytes: type
    # inference would turn an all-digit column into int64 and fail on a later
    # block, and bytes let one badly encoded cell be one bad record.
    try:
        with open(source.path, "rb") as f:
            # Decoded line by line: text mode decodes whole buffers, so a bad
            # byte in a later row would wrongly fail the header.
            lines = (raw.decode("utf-8-sig" if i == 0 else "utf-8") for i, raw in enumerate(f))
            header = next(csv.reader(lines), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"{source.name}: cannot read the header row ({_first_line(e)}); save the file as UTF-8 CSV.",
            reason="unreadable_file",
        ) from e
    if not any(h.strip() for h in header):
        raise DataError(f"{source.name}: empty file (no header row, no records).", reason="empty_file")
    columns = _columns(source, header)
    options = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in header},
        include_columns=columns,
        strings_can_be_null=False,  # an empty cell is "", not null
    )
    # Rows can span lines (quoted newlines), so CSV records carry an index, no line.
    index = 0
    try:
        reader = pacsv.open_csv(
            source.path,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            convert_options=options,
        )
        for batch in reader:
            for rec in batch.to_pylist():
                yield index, None, _decode_csv_row(rec)
                index += 1
    except pa.ArrowException as e:
        raise DataError(
            f"{source.name}: CSV error at record {index}: {_first_line(e)}. Fix the CSV "
            "(every row needs as many fields as the header; quote fields with commas or newlines).",
            reason="unreadable_file",
        ) from e
    if index == 0:
        raise DataError(f"{source.name}: a header row but no records.", reason="no_records")


def _decode_csv_row(rec: dict[str, bytes | None]) -> dict[str, Any] | _Bad:
    row: dict[str, Any] = {}
    for key, value in rec.items():
        if value is None:
            row[key] = None
            continue
        try:
            row[key] = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return _Bad(
                "undecodable_bytes",
                f"field '{key}' has invalid UTF-8 byte 0x{value[e.start]:02x} at byte {e.start + 1}; "
                "re-save the file as UTF-8",
            )
    if isinstance(row.get("messages"), str):
        # A CSV cell is flat text, so a chat record's messages arrive as JSON.
        try:
            row["messages"] = json.loads(row["messages"])
        except json.JSONDecodeError as e:
            return _Bad("malformed_json", f"field 'messages' is not valid JSON: {e}")
    return row


def _hub_records(source: _Source, split: str, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    dataset = _load_hub(source.name, split)
    if len(dataset) == 0:
        raise DataError(f"{source.name} (split {split}): zero records.", reason="no_records")
    columns = _columns(source, dataset.column_names)
    # Arrow format: each batch is a slice of the memory-mapped cache, turned
    # into Python rows one batch at a time.
    batches = dataset.select_columns(columns).with_format("arrow").iter(batch_size=batch_size)
    index = 0
    for table in batches:
        for record in table.to_pylist():
            yield index, None, record
            index += 1


def _load_hub(name: str, split: str) -> Any:
    try:
        # Imported here: local files never pay for (or need) `datasets`.
        import datasets
    except ImportError as e:
        raise DataError(
            f"{name}: reading a hub dataset needs the 'datasets' package (pip install datasets); "
            f"or use a local file, or {_OFFLINE_HINT}.",
            reason="hub_unreachable",
        ) from e
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - every failure becomes one readable DataError
        raise _hub_error(name, split, e) from e
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"{name} (split {split}): load_dataset returned {type(dataset).__name__}, expected a Dataset.",
            reason="unreadable_file",
        )
    return dataset


def _hub_error(name: str, split: str, error: Exception) -> DataError:
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain):
        return DataError(
            f"{name}: the Hugging Face hub cannot be reached and the dataset is not in the local "
            f"cache; {_OFFLINE_HINT}, or pass a local .jsonl/.json/.parquet/.csv file.",
            reason="hub_unreachable",
        )
    if any(type(e).__name__ == "DatasetNotFoundError" for e in chain):
        return DataError(
            f"{name}: no such dataset on the Hugging Face hub (or it is private or gated). Check the id; "
            f"a local file needs a {', '.join(SUFFIXES)} extension.",
            reason="hub_not_found",
        )
    if isinstance(error, ValueError) and "split" in str(error).lower():
        return DataError(
            f"{name}: split {split!r} not found: {_first_line(error)}. Choose one of the dataset's splits.",
            reason="hub_not_found",
        )
    return DataError(
        f"{name} (split {split}): could not load the hub dataset: {type(error).__name__}: "
        f"{_first_line(error)}",
        reason="hub_error",
    )


# --------------------------------------------------------------------------- records


def _read(
    source: _Source,
    split: str,
    skip_bad: bool,
    bad_counts: collections.Counter | None,
    batch_size: int,
) -> Iterator[list[Conversation]]:
    counts: collections.Counter = collections.Counter()  # this call's own, for the all-bad message
    batch: list[Conversation] = []
    total = good = 0
    for index, line, record in _records(source, split, batch_size):
        total += 1
        try:
            if isinstance(record, _Bad):
                raise record
            messages = _messages(record)
        except _Bad as bad:
            if not skip_bad:
                raise DataError(
                    f"{source.name}: {_where(source, index, line)}: {bad.detail}. {_SKIP_HINT}",
                    reason=bad.reason,
                ) from None
            counts[bad.reason] += 1
            if bad_counts is not None:
                bad_counts[bad.reason] += 1
            continue
        good += 1
        batch.append(Conversation(index, line if source.kind == "jsonl" else None, messages))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    if total == 0:  # every format checks this itself; kept so no source yields silently nothing
        raise DataError(f"{source.name}: zero records.", reason="no_records")
    if good == 0:
        summary = ", ".join(f"{reason}: {n}" for reason, n in counts.most_common())
        raise DataError(
            f"{source.name}: all {total} records were bad ({summary}); nothing is left to train on. "
            "Run without --skip-bad to see the first error.",
            reason="all_bad",
        )


def _where(source: _Source, index: int, line: int | None) -> str:
    if source.kind == "jsonl":
        return f"line {line} (record {index})"
    if source.kind == "json" and line is not None:
        return f"record {index} (starts on line {line})"
    return f"record {index}"


def _messages(record: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(record, dict):
        raise _Bad("not_an_object", f"the record is {_json_type(record)}, expected a JSON object")
    if "messages" in record:
        return _chat_messages(record["messages"])
    if "instruction" not in record:
        raise _Bad(
            "missing_field",
            "field 'instruction' is missing (expected an Alpaca record with 'instruction' and "
            "'output', or a chat record with 'messages')",
        )
    instruction = _text(record["instruction"], "instruction", nonempty=True)
    # 'input' is optional; null is how table formats spell an absent value.
    raw_input = record.get("input")
    input_text = "" if raw_input is None else _text(raw_input, "input", nonempty=False)
    if "output" not in record:
        raise _Bad("missing_field", "field 'output' is missing, expected a non-empty string")
    output = _text(record["output"], "output", nonempty=True)
    return ((USER, alpaca_prompt(instruction, input_text)), (ASSISTANT, output))


def _chat_messages(turns: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(turns, list):
        raise _Bad(
            "not_a_list",
            f"field 'messages' is {_json_type(turns)}, expected a list of {{role, content}} objects",
        )
    messages: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        field = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise _Bad(
                "not_an_object",
                f"field '{field}' is {_json_type(turn)}, expected an object with 'role' and 'content'",
            )
        for key in ("role", "content"):
            if key not in turn:
                raise _Bad("missing_field", f"field '{field}.{key}' is missing")
        role = _text(turn["role"], f"{field}.role", nonempty=False)
        if role not in ROLES:
            hint = " (ShareGPT's 'human'/'gpt' are 'user'/'assistant')" if role in ("human", "gpt") else ""
            raise _Bad(
                "unknown_role",
                f"field '{field}.role' is {role!r}, expected one of {', '.join(map(repr, ROLES))}{hint}",
            )
        # An empty user or system turn is odd but trainable; an empty reply is not.
        content = _text(turn["content"], f"{field}.content", nonempty=role == ASSISTANT)
        messages.append((role, content))
    if not any(role == ASSISTANT for role, _ in messages):
        raise _Bad(
            "no_assistant_turn",
            "field 'messages' has no assistant turn, so there is nothing to learn; add the reply",
        )
    if messages[-1][0] != ASSISTANT:
        raise _Bad(
            "ends_on_user_turn",
            f"field 'messages' ends on a {messages[-1][0]} turn (messages[{len(messages) - 1}]); "
            "the last turn must be the assistant's reply: add it or drop the trailing turn",
        )
    return tuple(messages)


def _text(value: Any, field: str, *, nonempty: bool) -> str:
    """`value` if it is an acceptable string for `field`; never altered."""
    if value is None:
        raise _Bad("not_a_string", f"field '{field}' is null, expected a non-empty string")
    if not isinstance(value, str):
        raise _Bad("not_a_string", f"field '{field}' is {_json_type(value)}, expected a string")
    nul = value.find("\x00")
    if nul >= 0:
        # A NUL is a broken export, and tokenizers and C-string tools disagree on it.
        raise _Bad(
            "nul_character",
            f"field '{field}' contains a NUL character (\\x00) at position {nul}; remove it",
        )
    if nonempty and not value.strip():
        what = "empty" if value == "" else "whitespace only"
        raise _Bad("empty_field", f"field '{field}' is {what}, expected a non-empty string")
    return value


def _json_type(value: Any) -> str:
    """How a JSON user would name the value's type, with a short preview."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""Where records come from: resolving `--data`, and the JSON formats read into raw records.

`resolve(data)` turns one `--data` value into the files (or hub dataset) it names:

    "sample"                 the embedded 999-record Alpaca sample (prep/data/alpaca_en_demo.json)
    path/to/file.jsonl       one JSON record per line
    path/to/file.json        one JSON array of records
    path/to/file.parquet     a table with the record fields as columns
    path/to/file.csv         likewise, with a header row
    path/to/folder           every file of one of those formats in it, in sorted order
    "path/to/*.jsonl"        a glob (quoted, so prep expands it), matches in sorted order
    owner/name               anything else: a Hugging Face hub dataset id

Each format's reader yields `(index, line, record)` per record, where a record already
known to be bad (undecodable bytes, malformed JSON) is a `Bad`: .json and .jsonl here,
.parquet and .csv in `prep.tables`, hub datasets in `prep.hub`. What a record must look
like is `prep.records`' business, not theirs. This module also holds what they share:
`Source`, `DataError`, `Bad` and the message helpers.

Memory grows with one batch, not with the data: .jsonl is read line by line,
.parquet and .csv through pyarrow's batch readers, hub datasets by iterating
their memory-mapped Arrow table in batches. The exception is .json, whose
single array is decoded whole by the standard library's `json`.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from sftcli import UserError

SAMPLE = "sample"
SAMPLE_PATH = Path(__file__).parent / "data" / "alpaca_en_demo.json"
SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
# Columns a table source may provide: the record fields of every accepted shape.
FIELDS = ("instruction", "input", "output", "messages", "conversations")
OFFLINE_HINT = "for offline work use the embedded sample: --data sample (make: DATA=sample)"
_BOM = b"\xef\xbb\xbf"
# What the hub accepts as a repo id; anything else cannot be a hub dataset.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# Extensions that mean "a file the user forgot we cannot read", so a missing
# `data.txt` gets "unknown file type" rather than a confusing hub lookup.
_FILE_LIKE = {
    ".txt", ".tsv", ".xls", ".xlsx", ".ndjson", ".gz", ".bz2", ".xz", ".zst", ".zip",
    ".tar", ".arrow", ".feather", ".yaml", ".yml", ".xml", ".md", ".html", ".pkl", ".pickle",
}


class DataError(UserError):
    """A bad input record or file; message names file, record, field and fix.

    `reason` is one of `prep.records.REASONS` for a record-level problem, or a file-level
    key such as "file_not_found", "empty_file", "no_records" or "hub_unreachable".
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class Bad(Exception):
    """A record-level problem, before the location is known to the message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Source:
    kind: str  # "json" | "jsonl" | "parquet" | "csv" | "hub"
    name: str  # what messages call it: the path, or the hub id
    path: Path | None  # None for hub datasets
    dataset: Any = field(default=None, compare=False)  # a hub dataset already loaded (by `preflight`)


def resolve(data: str) -> list[Source]:
    """The sources one `--data` value names, in reading order; raises DataError when there are none."""
    if data == SAMPLE:
        return [Source("json", f"{SAMPLE} ({SAMPLE_PATH})", SAMPLE_PATH)]
    known = ", ".join(SUFFIXES)
    if glob.has_magic(data):
        matches = sorted(glob.glob(os.path.expanduser(data), recursive=True))
        if not matches:
            raise DataError(f"{data}: the pattern matches no file (relative paths start at {Path.cwd()}).",
                            reason="file_not_found")
        files = [_file(m, Path(m)) for m in matches if not Path(m).is_dir()]
        if not files:
            raise DataError(f"{data}: the pattern matches only folders; name files, e.g. {data}/*.jsonl.",
                            reason="file_not_found")
        return files
    path = Path(data).expanduser()
    if path.is_dir():
        return _folder(data, path, known)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        if not path.is_file():
            raise DataError(
                f"{data}: file not found (relative paths start at {Path.cwd()}). Check the path, or {OFFLINE_HINT}.",
                reason="file_not_found",
            )
        return [_file(data, path)]
    if path.exists() or suffix in _FILE_LIKE:
        return [_file(data, path)]
    if not _HUB_ID.fullmatch(data):
        raise DataError(
            f"{data}: no such file, and not a Hugging Face hub dataset id (owner/name). "
            f"Pass an existing {known} file, a hub id such as yahma/alpaca-cleaned, or '{SAMPLE}'.",
            reason="file_not_found",
        )
    return [Source("hub", data, None)]


def _file(name: str, path: Path) -> Source:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{name}: unknown file type {path.suffix or '(no extension)'}; expected one of {', '.join(SUFFIXES)} "
            f"(convert the file, e.g. to .jsonl with one record per line), a hub dataset id, or '{SAMPLE}'.",
            reason="unknown_extension",
        )
    return Source(kind, name, path)


def _folder(data: str, path: Path, known: str) -> list[Source]:
    """Every supported file directly in `path`; one format only, so a stray export cannot slip in."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not p.name.startswith("."))
    kinds = sorted({p.suffix.lower() for p in files})
    if not files:
        raise DataError(f"{data}: is a directory with no {known} file in it; pass a folder of data files, "
                        f"a file, a hub dataset id, or '{SAMPLE}'.", reason="not_a_file")
    if len(kinds) > 1:
        raise DataError(
            f"{data}: the directory mixes {', '.join(kinds)} files; keep one format per folder, or pass a "
            f"glob such as '{os.path.join(data, '*' + kinds[0])}'.",
            reason="mixed_formats",
        )
    return [Source(SUFFIXES[p.suffix.lower()], str(Path(data) / p.name), p) for p in files]


class Line(NamedTuple):  # a tuple: one is made for every line read
    """One .jsonl record's bytes, not yet parsed: prep's workers parse it (`parse_line`), so that the
    driver, which reads every record, only splits lines."""

    raw: bytes
    start: int  # bytes of a byte-order mark cut from the line's start
    first: bool  # the file's first record


def parse_line(line: Line) -> Any:
    """A .jsonl line's record, or the `Bad` that says why it is none."""
    try:
        text = line.raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Bad("undecodable_bytes", f"invalid UTF-8 byte 0x{line.raw[e.start]:02x} at byte "
                   f"{line.start + e.start + 1} of the line; re-save the file as UTF-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = "each record must be one complete JSON object on one line"
        if line.first and text.lstrip().startswith("["):
            hint = "this looks like a JSON array; name the file .json"
        return Bad("malformed_json", f"malformed JSON at column {e.colno}: {e.msg} ({hint})")


def jsonl_records(source: Source, parse: bool = True) -> Iterator[tuple[int, int | None, Any]]:
    """(index, line, record or Bad) for every non-blank line; with `parse` False, a `Line` for the record."""
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
            line = Line(raw, start, index == 0)
            yield index, lineno, parse_line(line) if parse else line
            index += 1
    if index == 0:
        raise DataError(
            f"{source.name}: empty file (no records). Put one JSON record per line, or {OFFLINE_HINT}.",
            reason="empty_file",
        )


def _json_text(source: Source) -> str:
    assert source.path is not None
    raw = source.path.read_bytes()
    bom = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{source.name}: invalid UTF-8 byte 0x{raw[offset]:02x} at byte offset {offset} "
            f"(line {line}); a .json file is decoded as a whole, so "
            "re-save it as UTF-8 (or convert it to .jsonl, where --skip-bad can skip a bad line).",
            reason="undecodable_bytes",
        ) from None


def json_records(source: Source) -> Iterator[tuple[int, int | None, Any]]:
    """Records of a .json array, decoded whole by `json.loads` (the stdlib cannot stream
    an array; large data sets belong in .jsonl or .parquet)."""
    text = _json_text(source)
    if not text.strip():
        raise DataError(
            f"{source.name}: empty file (no records). Expected a JSON array of records, or {OFFLINE_HINT}.",
            reason="empty_file",
        )
    try:
        top = json.loads(text)
    except json.JSONDecodeError as e:
        raise _malformed(source, text, e) from None
    if not isinstance(top, list):
        raise _not_an_array(source, top)
    if not top:
        raise DataError(
            f"{source.name}: the JSON array is empty (no records). Add records, or {OFFLINE_HINT}.",
            reason="no_records",
        )
    for index, record in enumerate(top):
        yield index, None, record


def _not_an_array(source: Source, top: Any) -> DataError:
    return DataError(
        f"{source.name}: the top level is {json_type(top)}: expected a JSON array of records; "
        "for one record per line use .jsonl.",
        reason="not_a_list",
    )


def _malformed(source: Source, text: str, error: json.JSONDecodeError) -> DataError:
    """The stdlib's error, located in the record it falls in (found only now, on the error path)."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text.startswith("[", start):
        try:  # a whole object followed by more (JSON Lines named .json) is a shape error, not a syntax error
            top, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            top = None
        if top is not None:
            return _not_an_array(source, top)
    index = sum(1 for _, at in array_items(text) if at <= error.pos) - 1
    where = f"record {index} (line {error.lineno}, column {error.colno})" if index >= 0 else \
        f"line {error.lineno}, column {error.colno}"
    return DataError(
        f"{source.name}: {where}: malformed JSON: {error.msg}. "
        "Fix the JSON (a .json file must parse as a whole); --skip-bad cannot skip this.",
        reason="malformed_json",
    )


def array_items(text: str) -> Iterator[tuple[int, int]]:
    """(index, start offset) of each element of the JSON array `text`, up to the first syntax error.

    Only for messages: where a record starts, or which record holds an error.
    """
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        return
    pos = ws.match(text, pos + 1).end()
    index = 0
    while pos < len(text) and not text.startswith("]", pos):
        yield index, pos
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        pos = ws.match(text, pos).end()
        if not text.startswith(",", pos):
            return
        pos = ws.match(text, pos + 1).end()
        index += 1


def record_line(source: Source, index: int) -> int | None:
    """The line where record `index` of a .json file starts (error messages only), else None."""
    if source.kind != "json":
        return None
    text = _json_text(source)
    at = next((pos for i, pos in array_items(text) if i == index), None)
    return None if at is None else text.count("\n", 0, at) + 1


def json_type(value: Any) -> str:
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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

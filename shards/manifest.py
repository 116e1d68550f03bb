"""The manifest: the typed description of a shard set, written last as `manifest.json`.

`Manifest.from_json` is the only way in: it checks every key's presence and type and
lists all the problems in one error that ends with the command that rebuilds the set.
Readers use fields (`manifest.max_length`), never dict keys.

    >>> entry = FileEntry(name="train-00000.arrow", split="train", rows=2, tokens=9, bytes=100, sha256="ab")
    >>> FileEntry.from_json(entry.to_json()) == entry
    True
    >>> FileEntry.from_json({"name": "x", "split": "train", "rows": "2", "tokens": 9})
    Traceback (most recent call last):
    ...
    shards.manifest.ManifestError: file entry: rows: expected int, got str; bytes: missing; sha256: missing
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from sftcli import UserError
from shards.folders import write_atomic

FORMAT_VERSION = 3  # 2: typed manifest; masks end at each turn's end-of-turn token; 3: the chat template's record
MANIFEST = "manifest.json"


class ShardError(UserError):
    """A shard set that cannot be used as it is; the message says how to rebuild it."""


class ManifestError(ShardError):
    """A manifest with missing or mistyped keys."""


def _convert(value: Any, hint, where: str, problems: list[str]) -> Any:
    """`value` checked against the type `hint`; problems are appended, never raised."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where, problems)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return None
        return hint._from_dict(value, where, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        return [_convert(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return {}
        return {k: _convert(v, args[1], f"{where}.{k}", problems) for k, v in value.items()} if args else value
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float
          else isinstance(value, int) and not isinstance(value, bool) if hint is int
          else isinstance(value, hint))
    if not ok:
        problems.append(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return float(value) if hint is float and ok else value


class _Json:
    """Typed JSON round trip for the frozen dataclasses below."""

    @classmethod
    def _from_dict(cls, data: dict, where: str, problems: list[str]):
        values = {}
        for name, hint in get_type_hints(cls).items():
            key = f"{where}.{name}" if where else name
            if name not in data:
                problems.append(f"{key}: missing")
                continue
            values[name] = _convert(data[name], hint, key, problems)
        return cls(**values) if len(values) == len(get_type_hints(cls)) else None

    @classmethod
    def from_json(cls, data: dict, hint: str = "", label: str | None = None):
        """The object, or one ManifestError listing every missing or mistyped key (then `hint`)."""
        problems: list[str] = []
        result = _convert(data, cls, "", problems)
        if problems:
            label = label or cls.__doc__.split(":")[0].strip()
            message = "; ".join(p.lstrip(": ").lstrip(".") for p in problems)
            raise ManifestError(f"{label}: {message}" + (f"; {hint}" if hint else ""))
        return result

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FileEntry(_Json):
    """file entry: one Arrow file of the set."""

    name: str
    split: str  # "train" or "val"
    rows: int
    tokens: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SourceEntry(_Json):
    """source entry: one file (or hub dataset) prep read, in reading order."""

    source: str  # the path as resolved from --data, or the hub id
    fingerprint: str  # sha256 of the file's bytes, or hub:{id}:{split}:{dataset fingerprint}


@dataclass(frozen=True)
class SplitStats(_Json):
    """split statistics: what prep wrote into one split (rows as written, samples as kept)."""

    rows: int
    tokens: int
    supervised_tokens: int
    fill: float  # tokens / (rows x max_length)
    pad_fraction_at_batch: float  # padding a collator adds padding batches of `batch_size` rows to their longest
    batch_size: int
    samples_per_row: dict[str, float]  # mean, max
    samples: int
    truncated: int  # samples cut to max_length
    split: int  # samples whose pieces are in more than one row (packed mode)
    dropped: dict[str, int]  # samples or records dropped, by reason
    rows_without_supervised_tokens_dropped: int


@dataclass(frozen=True)
class ShardStats(SplitStats):
    """shard statistics: the train split's statistics, the samples prep read, and the val split's."""

    records_read: int
    lower_bound_rows: int  # Martello-Toth L2 bound on the rows any whole-sample packing needs
    sample_length: dict[str, float]  # p50, p90, p99, mean, max, min of the train samples written
    val: SplitStats


@dataclass(frozen=True)
class PromptMismatch(_Json):
    """prompt mismatch: a conversation shape whose training text before a reply is not the generation prompt."""

    roles: str  # the shape's roles, comma-separated
    first_turn: int  # the first assistant turn (message index) where they differ
    conversations: int  # conversations of that shape


@dataclass(frozen=True)
class TemplateRecord(_Json):
    """chat template record: the template's options and what it did to the conversations."""

    sha256: str  # of the chat template's text
    kwargs: dict  # --chat-template-kwargs
    date: str | None  # what the template's strftime_now gave (--template-date); None when it never calls it
    system_message: str  # --system-message
    dropped_messages: dict[str, int]  # messages the template left out, by role ("reasoning": replies' reasoning)
    closed_replies: dict[str, int]  # conversations whose last reply the template left open, by the token prep added
    prompt_matches_generation: bool  # no shape below
    mismatches: list[PromptMismatch]


@dataclass(frozen=True)
class Manifest(_Json):
    """manifest.json: the shard set's contract (see shards/format.py for the files it lists)."""

    format_version: int
    mode: str  # padding | packed | concat
    max_length: int
    packer: str | None  # concat only
    loss_on: str
    token_dtype: str  # uint16 | uint32
    vocab_size: int
    pad_token_id: int
    eos_token_id: int | None
    bos_token_id: int | None
    end_of_turn_token_id: int  # the special token that closes an assistant turn; generation stops there
    prompt_format: str  # how Alpaca records' user turns were rendered: alpaca | none (shards.prompts)
    encoder: str  # what encoded the texts: tiktoken | tokenizers (the ids are the same)
    template: TemplateRecord
    tokenizer_fingerprint: str  # sha256 of the saved tokenizer files, chat template included
    source: str  # the --data values, comma-separated
    source_fingerprint: str  # the one source's fingerprint, or the sha256 of all of them in order
    sources: list[SourceEntry]
    args: dict  # the PrepConfig that made the set
    command: str  # the prep command line, quoted in every rebuild hint
    files: list[FileEntry]
    stats: ShardStats

    def split_files(self, split: str) -> list[FileEntry]:
        return [f for f in self.files if f.split == split]

    def fingerprint(self) -> str:
        """sha256 of what the set holds (files with their sha256, tokenizer, statistics), leaving out
        how it was made (`command`, `args`, `source`, `sources` name paths; `encoder` gives the same
        ids either way): a copy on another node, or the same data prepared there, matches."""
        provenance = ("command", "args", "source", "sources", "encoder")
        content = {k: v for k, v in self.to_json().items() if k not in provenance}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def rebuild_hint(manifest: Manifest | dict | None) -> str:
    """The command that rebuilds a shard set, from its manifest when it has one (even a broken one)."""
    command = manifest.get("command") if isinstance(manifest, dict) else getattr(manifest, "command", None)
    if isinstance(command, str) and command:
        return f"rebuild it with: {command}"
    return "rebuild it with: make shards MODE=<mode> (python -m prep ...)"


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write manifest.json last: its presence marks a complete shard set."""
    write_atomic(Path(folder) / MANIFEST, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ShardError(f"{folder}: no such shard set folder; build one with: make shards MODE=<mode>")
    if not path.is_file():
        raise ShardError(f"{path}: missing, so {folder} is not a complete shard set; {rebuild_hint(None)}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e}); {rebuild_hint(None)}") from None
    if not isinstance(data, dict):
        raise ShardError(f"{path}: not a JSON object; {rebuild_hint(None)}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(f"{path}: shard format version {version!r}, but this sftpack reads version "
                         f"{FORMAT_VERSION}; {rebuild_hint(data)}")
    return Manifest.from_json(data, rebuild_hint(data), label=str(path))

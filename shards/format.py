"""The shard format: the one contract between `prep` (writes it) and `train` (reads it).

A shard set is a folder:

    manifest.json          written last; describes everything below
    tokenizer/             the exact tokenizer that made the shards (save_pretrained)
    train-00000.arrow ...  uncompressed Arrow IPC files, one row per training row
    val-00000.arrow ...    the validation split, always one sample per row

Every Arrow file has the columns of `schema(token_dtype)`:

    input_ids        list<uint16|uint32>  the row's tokens, unpadded
    loss_mask        list<uint8>          1 where the token is a label target
    segment_lengths  list<uint32>         lengths of the pieces of samples in the row
    segment_sources  list<uint32>         source-record index of each piece

`loss_mask[t] == 1` means "token t is predicted": the trainer turns it into
labels (IGNORE_INDEX elsewhere) and shifts once, inside the model's loss.

Files are uncompressed so that `pyarrow.memory_map` gives zero-copy numpy
views of the token buffers; nothing is read into RAM until a batch touches it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from shards.manifest import (FORMAT_VERSION, MANIFEST, FileEntry, Manifest, ShardError, read_manifest,  # noqa: F401
                             rebuild_hint, write_manifest)

IGNORE_INDEX = -100
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
# Bounded file size: a file holds at most this many tokens (64 MiB of uint16).
MAX_TOKENS_PER_FILE = 32 * 1024 * 1024


def token_dtype_for(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every token id.

    >>> token_dtype_for(50259), token_dtype_for(128256)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def schema(token_dtype: np.dtype) -> pa.Schema:
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.from_numpy_dtype(np.dtype(token_dtype)))),
            ("loss_mask", pa.list_(pa.uint8())),
            ("segment_lengths", pa.list_(pa.uint32())),
            ("segment_sources", pa.list_(pa.uint32())),
        ]
    )


def file_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def per_row_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each row's slice of a flat array (CSR offsets); 0 for an empty row.

    The one per-row sum: `np.add.reduceat` would misread empty rows.

    >>> per_row_sum(np.array([3, 2, 5]), np.array([0, 2, 2, 3])).tolist()
    [5, 0, 5]
    >>> per_row_sum(np.array([9, 3, 2]), np.array([1, 3])).tolist()
    [5]
    """
    cumsum = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return np.diff(cumsum[np.asarray(offsets, dtype=np.int64)])


# --------------------------------------------------------------------------- writing


@dataclass
class Rows:
    """A batch of rows in flat (CSR) form, ready to become Arrow list columns.

    `row_offsets` has one more entry than there are rows; row r's tokens are
    `tokens[row_offsets[r]:row_offsets[r + 1]]`, and likewise its segments with
    `segment_offsets`.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    row_offsets: np.ndarray
    segment_lengths: np.ndarray
    segment_sources: np.ndarray
    segment_offsets: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1


def _list_array(values: np.ndarray, offsets: np.ndarray, dtype: np.dtype) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(dtype, copy=False)))


class SplitWriter:
    """Appends `Rows` to `{split}-NNNNN.arrow` files of at most MAX_TOKENS_PER_FILE tokens."""

    def __init__(self, folder: Path, split: str, token_dtype: np.dtype, vocab_size: int,
                 max_tokens_per_file: int = MAX_TOKENS_PER_FILE, first_index: int = 0):
        self.folder, self.split, self.first_index = Path(folder), split, first_index
        self.token_dtype, self.vocab_size = np.dtype(token_dtype), vocab_size
        self.max_tokens_per_file = max_tokens_per_file
        self.schema = schema(self.token_dtype)
        self.files: list[FileEntry] = []
        self._file: dict = {}
        self._writer = None
        self._sink = None
        self._file_tokens = 0

    def _open(self) -> None:
        name = file_name(self.split, self.first_index + len(self.files))
        self._sink = pa.OSFile(str(self.folder / name), "wb")
        # Uncompressed IPC *file* format (not stream): random access + zero-copy mmap.
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._file = {"name": name, "split": self.split, "rows": 0, "tokens": 0}
        self._file_tokens = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        path = self.folder / self._file["name"]
        self.files.append(FileEntry(**self._file, bytes=path.stat().st_size, sha256=sha256_file(path)))
        self._writer = self._sink = None
        self._file = {}

    def write(self, rows: Rows) -> None:
        if rows.num_rows == 0:
            return
        if len(rows.tokens) and int(rows.tokens.max()) >= self.vocab_size:
            bad = int(rows.tokens.max())
            raise ShardError(f"token id {bad} is outside the vocabulary of {self.vocab_size} tokens")
        if len(rows.tokens) and int(rows.tokens.min()) < 0:
            raise ShardError(f"negative token id {int(rows.tokens.min())}")
        # Split the batch so that no file grows past the token bound (a row never spans files).
        start = 0
        while start < rows.num_rows:
            if self._writer is None or self._file_tokens >= self.max_tokens_per_file:
                self._close()
                self._open()
            room = self.max_tokens_per_file - self._file_tokens
            base = rows.row_offsets[start]
            stop = int(np.searchsorted(rows.row_offsets, base + room, side="right")) - 1
            stop = min(max(stop, start + 1), rows.num_rows)
            self._write_slice(rows, start, stop)
            start = stop

    def _write_slice(self, rows: Rows, start: int, stop: int) -> None:
        t0, t1 = rows.row_offsets[start], rows.row_offsets[stop]
        s0, s1 = rows.segment_offsets[start], rows.segment_offsets[stop]
        batch = pa.record_batch(
            [
                _list_array(rows.tokens[t0:t1], rows.row_offsets[start:stop + 1] - t0, self.token_dtype),
                _list_array(rows.loss_mask[t0:t1], rows.row_offsets[start:stop + 1] - t0, np.uint8),
                _list_array(rows.segment_lengths[s0:s1], rows.segment_offsets[start:stop + 1] - s0, np.uint32),
                _list_array(rows.segment_sources[s0:s1], rows.segment_offsets[start:stop + 1] - s0, np.uint32),
            ],
            schema=self.schema,
        )
        self._writer.write_batch(batch)
        self._file["rows"] += stop - start
        self._file["tokens"] += int(t1 - t0)
        self._file_tokens += int(t1 - t0)

    def finish(self) -> list[FileEntry]:
        self._close()
        return self.files


def tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    """sha256 over the saved tokenizer files (chat template included), in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(tokenizer_dir).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Row:
    """One row as stored: zero-copy views into the memory-mapped file."""

    input_ids: np.ndarray
    loss_mask: np.ndarray  # 1 where the token is a label
    segment_lengths: np.ndarray  # the row's pieces of samples, in order
    segment_sources: np.ndarray  # source-record index of each piece


@dataclass
class SplitArrays:
    """Zero-copy numpy views of one split: flat token buffers plus row offsets.

    Rows of all files are numbered 0..num_rows-1 in file order; each part is one
    Arrow record batch of one file.
    """

    files: list[FileEntry]
    _parts: list[dict]
    _starts: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    def locate(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """Global row numbers -> (part index, row within that part)."""
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self._starts, rows, side="right") - 1
        return part, rows - self._starts[part]

    def rows(self, indices) -> list[Row]:
        """Zero-copy views of the given rows (global row numbers), in that order."""
        part_of_row, local = self.locate(indices)
        out = []
        for p, i in zip(part_of_row.tolist(), local.tolist()):
            part = self._parts[p]
            a, b = part["row_offsets"][i], part["row_offsets"][i + 1]
            sa, sb = part["segment_offsets"][i], part["segment_offsets"][i + 1]
            out.append(Row(part["input_ids"][a:b], part["loss_mask"][a:b], part["segment_lengths"][sa:sb],
                           part["segment_sources"][sa:sb]))
        return out

    def row(self, r: int) -> Row:
        return self.rows([r])[0]

    def row_lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(p["row_offsets"]) for p in self._parts]) if self._parts else np.zeros(0, np.int64)

    def parts(self) -> list[dict]:
        """Per-record-batch dicts of flat arrays: input_ids, loss_mask, row_offsets, segment_*."""
        return self._parts


def _flat(array: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column as zero-copy numpy views."""
    offsets = array.offsets.to_numpy(zero_copy_only=True)
    values = array.values.to_numpy(zero_copy_only=True)
    # `values` is the whole child buffer; offsets index into it (they start at array.offset's value).
    return values, offsets


class ShardSet:
    """A checked, memory-mapped shard set.

    >>> # ShardSet.open("shards/concat-256").split("train").num_rows
    """

    def __init__(self, folder: Path, manifest: Manifest, splits: dict[str, SplitArrays]):
        self.folder, self.manifest, self._splits = Path(folder), manifest, splits

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / TOKENIZER_DIR

    def split(self, name: str) -> SplitArrays:
        return self._splits[name]

    @classmethod
    def open(cls, folder: Path, verify: bool = False) -> "ShardSet":
        """Check the files against the manifest and memory-map them.

        Always checked: format version, every file present with its byte size and
        row count, the tokenizer fingerprint. With verify=True also each sha256.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        hint = rebuild_hint(manifest)
        tok_dir = folder / TOKENIZER_DIR
        if not tok_dir.is_dir():
            raise ShardError(f"{tok_dir}: the tokenizer saved with the shards is missing; {hint}")
        if tokenizer_fingerprint(tok_dir) != manifest.tokenizer_fingerprint:
            raise ShardError(
                f"{tok_dir}: tokenizer files do not match the manifest's tokenizer_fingerprint "
                f"(the shards were made by another tokenizer); {hint}"
            )
        token_dtype = np.dtype(manifest.token_dtype)
        splits: dict[str, list] = {s: [] for s in SPLITS}
        files_by_split: dict[str, list] = {s: [] for s in SPLITS}
        for entry in manifest.files:
            path = folder / entry.name
            if not path.is_file():
                raise ShardError(f"{path}: listed in the manifest but missing; {hint}")
            size = path.stat().st_size
            if size != entry.bytes:
                raise ShardError(f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated or altered); {hint}")
            if verify and sha256_file(path) != entry.sha256:
                raise ShardError(f"{path}: sha256 differs from the manifest (the file is corrupted); {hint}")
            try:
                reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
                if reader.schema != schema(token_dtype):
                    raise ShardError(f"{path}: columns {reader.schema.names} do not match format {FORMAT_VERSION}; {hint}")
                # One part per record batch: combining batches would copy the file into RAM.
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            except (pa.ArrowInvalid, OSError) as e:
                raise ShardError(f"{path}: not a readable Arrow file ({e}); {hint}") from None
            rows = sum(batch.num_rows for batch in batches)
            if rows != entry.rows:
                raise ShardError(f"{path}: {rows} rows, the manifest says {entry.rows}; {hint}")
            for batch in batches:
                ids, row_offsets = _flat(batch.column(0))
                mask, _ = _flat(batch.column(1))
                seg_len, seg_offsets = _flat(batch.column(2))
                seg_src, _ = _flat(batch.column(3))
                splits[entry.split].append({
                    "input_ids": ids, "loss_mask": mask, "row_offsets": row_offsets,
                    "segment_lengths": seg_len, "segment_sources": seg_src, "segment_offsets": seg_offsets,
                    "batch": batch,  # keeps the memory map alive
                })
            files_by_split[entry.split].append(entry)
        arrays = {
            s: SplitArrays(files_by_split[s], splits[s],
                           np.concatenate([[0], np.cumsum([len(p["row_offsets"]) - 1 for p in splits[s]])]).astype(np.int64))
            for s in SPLITS
        }
        return cls(folder, manifest, arrays)

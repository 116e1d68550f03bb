"""Prep's scratch format between its two passes: every sample's ids and loss mask, spilled to disk.

Each process of pass 1 (the driver, a pool worker, a Ray actor) appends the batches it tokenizes to
its own part, two flat files in the staging folder's `spill/` (`NAME.ids` in the shard dtype,
`NAME.mask` as uint8), and reports where each batch starts. The driver keeps only per-sample
numbers (`Spill`: length, part, start, source record, supervised head), in input order; pass 2's
writers read the samples' pieces back from the memory-mapped parts. A private format: plain numpy
files do, and nothing of it outlives the run.
"""
from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOLDER = "spill"


class Part:
    """One process's append-only part of the spill."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / FOLDER
        self.folder.mkdir(exist_ok=True)
        self.name = uuid.uuid4().hex  # unique across the processes (and the machines) of one run

    def append(self, ids: np.ndarray, mask: np.ndarray) -> int:
        """Append one batch; returns its first token's offset in the part."""
        with open(self.folder / f"{self.name}.ids", "ab") as ids_file, \
                open(self.folder / f"{self.name}.mask", "ab") as mask_file:
            start = ids_file.seek(0, 2) // ids.itemsize
            ids.tofile(ids_file)
            mask.tofile(mask_file)
        return start


_MAPS: dict[Path, tuple[np.ndarray, np.ndarray]] = {}  # this process's open parts


def _mapped(folder: Path, name: str, token_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    path = Path(folder) / FOLDER / name
    if path not in _MAPS:
        _MAPS[path] = (np.memmap(path.with_suffix(".ids"), dtype=token_dtype, mode="r"),
                       np.memmap(path.with_suffix(".mask"), dtype=np.uint8, mode="r"))
    return _MAPS[path]


def forget() -> None:
    """Close this process's maps of the parts (before they are removed)."""
    _MAPS.clear()


def read(folder: Path, names: list[str], token_dtype: np.dtype, part: np.ndarray, start: np.ndarray,
         length: np.ndarray, ids: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """The tokens (unless `ids` is False) and mask of pieces, concatenated: piece k is tokens
    [start[k], start[k] + length[k]) of part `names[part[k]]`."""
    offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
    tokens = np.empty(offsets[-1], dtype=token_dtype) if ids else None
    mask = np.empty(offsets[-1], dtype=np.uint8)
    for p in np.unique(part):  # a handful: one part a process
        pieces = np.flatnonzero(part == p)
        n = length[pieces]
        within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        source = np.repeat(start[pieces], n) + within
        target = np.repeat(offsets[pieces], n) + within
        part_ids, part_mask = _mapped(folder, names[p], token_dtype)
        mask[target] = part_mask[source]
        if ids:
            tokens[target] = part_ids[source]
    return tokens, mask


@dataclass
class Spill:
    """What the driver keeps of pass 1: per-sample numbers, in input order (the tokens stay on disk)."""

    folder: Path
    token_dtype: np.dtype
    names: list[str]  # the parts
    lengths: np.ndarray
    part: np.ndarray  # index into names
    start: np.ndarray  # first token in the part
    sources: np.ndarray  # source-record index
    supervised_head: np.ndarray  # supervised tokens among each sample's first max_length
    alpaca: bool  # some user turn was rendered from an Alpaca record
    locate: object  # source index -> "FILE: record K", for messages

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def read(self, samples: np.ndarray, start: np.ndarray, stop: np.ndarray, ids: bool = True):
        """Tokens [start, stop) of each of `samples`, concatenated: (ids or None, mask)."""
        return read(self.folder, self.names, self.token_dtype, self.part[samples], self.start[samples] + start,
                    stop - start, ids)

    def remove(self) -> None:
        forget()
        shutil.rmtree(Path(self.folder) / FOLDER, ignore_errors=True)

"""Pass 2 of prep: spilled samples -> length policy -> one global row layout -> shard files.

The driver splits train/val, applies the length policy, lays every row out with the pure packing
functions (prep.packing) from the lengths alone, and plans which rows each shard file holds. Each file
is then one task (prep.workers): it gathers its rows' pieces from the memory-mapped spill and writes
the whole file, so the files are written in parallel and are the same bytes on any number of workers.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prep import packing, spill as spilled
from prep.config import PrepConfig
from prep.spill import Spill
from shards import format as fmt
from shards.manifest import ShardStats, SplitStats
from shards.stats import row_stats, sample_stats
from sftcli import UserError

ROWS_PER_WRITE = 8192  # rows of one Arrow record batch (at most)


class PrepError(UserError):
    """A prep run that cannot produce a correct shard set; the message says how to fix it."""


def apply_length_policy(config: PrepConfig, spill: Spill, samples: np.ndarray, policy: str,
                        dropped: collections.Counter) -> tuple[np.ndarray, np.ndarray, int]:
    """Samples kept and their lengths after truncation; counts what was dropped."""
    lengths = spill.lengths[samples]
    over = lengths > config.max_length
    if policy == "error" and over.any():
        first = samples[np.argmax(over)]
        raise PrepError(
            f"{spill.locate(int(spill.sources[first]))} is {spill.lengths[first]} tokens, over --max-length "
            f"{config.max_length}; raise --max-length, or pass --overlong truncate or --overlong drop"
        )
    keep = np.ones(len(samples), dtype=bool)
    if policy == "drop":
        keep &= ~over
        dropped["too_long"] += int(over.sum())
    lengths = np.minimum(lengths, config.max_length)
    no_labels = keep & (spill.supervised_head[samples] == 0)
    dropped["no_supervised_tokens_after_truncation"] += int(no_labels.sum())
    keep &= ~no_labels
    truncated = int((over & keep).sum())
    return samples[keep], lengths[keep], truncated


def _layout(config: PrepConfig, mode: str, lengths: np.ndarray) -> packing.Layout:
    if mode == "padding":
        return packing.pack_padding(lengths, config.max_length)
    if mode == "packed":
        return packing.pack_packed(lengths, config.max_length)
    layout = packing.pack_concat(lengths, config.max_length, packer=config.packer)
    # Packers emit rows grouped by size; shuffle so training does not see all long rows first.
    return packing.shuffle_rows(layout, config.seed)


@dataclass
class FileSpec:
    """One shard file's rows as pieces of spilled samples: what its writer needs, and no more."""

    folder: Path
    split: str
    index: int
    token_dtype: str
    vocab_size: int
    parts: list[str]
    piece_part: np.ndarray
    piece_start: np.ndarray  # first token in the part
    piece_length: np.ndarray
    piece_source: np.ndarray
    row_pieces: np.ndarray  # row r is pieces [row_pieces[r], row_pieces[r + 1])
    batches: np.ndarray  # Arrow record batch b is rows [batches[b], batches[b + 1])


def write_file(spec: FileSpec) -> tuple[fmt.FileEntry, np.ndarray]:
    """Pass 2's task: one whole shard file; returns its entry and each row's supervised tokens."""
    writer = fmt.SplitWriter(spec.folder, spec.split, spec.token_dtype, spec.vocab_size,
                             max_tokens_per_file=sys.maxsize, first_index=spec.index)
    supervised = []
    for r0, r1 in zip(spec.batches[:-1], spec.batches[1:]):
        p0, p1 = spec.row_pieces[r0], spec.row_pieces[r1]
        length = spec.piece_length[p0:p1]
        tokens, mask = spilled.read(spec.folder, spec.parts, np.dtype(spec.token_dtype), spec.piece_part[p0:p1],
                                    spec.piece_start[p0:p1], length)
        row_pieces = spec.row_pieces[r0:r1 + 1] - p0
        rows = fmt.Rows(tokens=tokens, loss_mask=mask, row_offsets=np.concatenate([[0], np.cumsum(length)])[row_pieces],
                        segment_lengths=length, segment_sources=spec.piece_source[p0:p1], segment_offsets=row_pieces)
        writer.write(rows)
        supervised.append(fmt.per_row_sum(mask, rows.row_offsets))
    (entry,) = writer.finish()
    return entry, np.concatenate(supervised)


def file_plan(row_tokens: np.ndarray, block: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Each file's record batches as row offsets. A file takes rows until it holds `max_tokens` or more
    (the row that crosses the bound is its own record batch); batches also break where `block` (a row's
    write block) changes.

    >>> [f.tolist() for f in file_plan(np.array([4, 4, 4, 4, 3]), np.array([0, 0, 0, 0, 1]), 10)]
    [[0, 2, 3], [3, 4, 5]]
    """
    ends = np.concatenate([[0], np.cumsum(row_tokens)])
    files, first = [], 0
    while first < len(row_tokens):
        last = min(max(int(np.searchsorted(ends, ends[first] + max_tokens, side="left")), first + 1), len(row_tokens))
        cuts = {first, last} | {first + 1 + i for i in np.flatnonzero(np.diff(block[first:last]))}
        if ends[last] - ends[first] > max_tokens:
            cuts.add(last - 1)
        files.append(np.array(sorted(cuts), dtype=np.int64))
        first = last
    return files


def _row_supervised(spill: Spill, samples: np.ndarray, layout: packing.Layout) -> np.ndarray:
    """Supervised tokens of every row of a layout, from the spilled masks."""
    out = []
    for r0 in range(0, layout.num_rows, ROWS_PER_WRITE):
        r1 = min(r0 + ROWS_PER_WRITE, layout.num_rows)
        p0, p1 = layout.row_offsets[r0], layout.row_offsets[r1]
        _, mask = spill.read(samples[layout.sample[p0:p1]], layout.start[p0:p1], layout.stop[p0:p1], ids=False)
        ends = np.concatenate([[0], np.cumsum(layout.stop[p0:p1] - layout.start[p0:p1])])
        out.append(fmt.per_row_sum(mask, ends[layout.row_offsets[r0:r1 + 1] - p0]))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _file_specs(spill, staging, split, token_dtype, vocab_size, samples, layout, rows, row_tokens):
    """The FileSpec of every file of the split's `rows` (layout rows, in order, of `row_tokens` tokens each),
    one file at a time."""
    for index, batches in enumerate(file_plan(row_tokens, rows // ROWS_PER_WRITE, fmt.MAX_TOKENS_PER_FILE)):
        file_rows = rows[batches[0]:batches[-1]]
        pieces_of_row = np.diff(layout.row_offsets)[file_rows]
        row_pieces = np.concatenate([[0], np.cumsum(pieces_of_row)])
        piece = np.repeat(layout.row_offsets[file_rows] - row_pieces[:-1], pieces_of_row) + np.arange(row_pieces[-1])
        sample = samples[layout.sample[piece]]
        yield FileSpec(staging, split, index, np.dtype(token_dtype).name, vocab_size, spill.names, spill.part[sample],
                       spill.start[sample] + layout.start[piece], layout.stop[piece] - layout.start[piece],
                       spill.sources[sample], row_pieces, batches - batches[0])


def _write_split(config, spill, staging, split, mode, samples, lengths, token_dtype, vocab_size, pool, progress):
    layout = _layout(config, mode, lengths)
    rows = np.arange(layout.num_rows, dtype=np.int64)
    if mode == "packed":  # a cut can leave a row of prompt tokens only: it would give a 0/0 loss
        rows = rows[_row_supervised(spill, samples, layout) > 0]
    row_lengths = fmt.per_row_sum(layout.stop - layout.start, layout.row_offsets)[rows]
    specs = _file_specs(spill, staging, split, token_dtype, vocab_size, samples, layout, rows, row_lengths)
    files, supervised = [], []
    bar = tqdm(desc=f"write {split}", unit=" files", disable=None if progress else True, file=sys.stderr)
    with bar:
        for _, (entry, row_supervised) in pool.map(write_file, specs, lambda spec: (spec,), start=False):
            files.append(entry)
            supervised.append(row_supervised)
            bar.update()
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    stats = row_stats(row_lengths, cat(supervised), np.diff(layout.row_offsets)[rows], config.max_length,
                      config.stats_batch_size)
    return files, dict(stats, rows_without_supervised_tokens_dropped=int(layout.num_rows - len(rows)),
                       split=layout.samples_split())


def write_rows(config, spill: Spill, staging, token_dtype, vocab_size, pool, progress) -> tuple[list, ShardStats]:
    """Every shard file of both splits, and the set's statistics."""
    n = len(spill)
    n_val = int(round(n * config.val_ratio))
    if config.val_ratio > 0 and n_val == 0 and n > 1:
        n_val = 1
    all_samples = np.arange(n, dtype=np.int64)
    train_samples, val_samples = all_samples[: n - n_val], all_samples[n - n_val:]
    dropped: collections.Counter = collections.Counter()
    if config.mode == "packed":
        kept, lengths, truncated = train_samples, spill.lengths[train_samples], 0
    else:
        kept, lengths, truncated = apply_length_policy(config, spill, train_samples, config.overlong, dropped)
    if len(kept) == 0:
        raise PrepError(
            f"{', '.join(config.data)}: no training sample is left after the length policy ({dict(dropped)}); "
            "raise --max-length or use --overlong truncate"
        )
    val_dropped: collections.Counter = collections.Counter()
    # Validation rows are one sample each whatever the mode, so they follow --overlong (packed
    # training rows have no such policy: there they are truncated, as padding rows must be).
    val_policy = "truncate" if config.mode == "packed" else config.overlong
    val_kept, val_lengths, val_truncated = apply_length_policy(config, spill, val_samples, val_policy, val_dropped)
    split_args = (token_dtype, vocab_size, pool, progress)
    train_files, train_stats = _write_split(config, spill, staging, "train", config.mode, kept, lengths, *split_args)
    val_files, val_stats = _write_split(config, spill, staging, "val", "padding", val_kept, val_lengths, *split_args)
    val = SplitStats(**val_stats, samples=int(len(val_kept)), truncated=val_truncated,
                     dropped={k: v for k, v in val_dropped.items() if v})
    stats = ShardStats(
        **train_stats, samples=int(len(kept)), truncated=truncated, dropped={k: v for k, v in dropped.items() if v},
        records_read=int(n), sample_length=sample_stats(lengths),
        lower_bound_rows=packing.lower_bound_rows(np.minimum(lengths, config.max_length), config.max_length),
        val=val,
    )
    return train_files + val_files, stats

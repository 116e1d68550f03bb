"""Collation: rows of a shard split -> padded model inputs, the one way every consumer batches.

Rows arrive as prep wrote them (unpadded, with their segment lengths) and leave as
padded arrays: input ids, labels (IGNORE_INDEX where no loss is taken), and position
ids that restart per sample. `python -m train` uses it, and so can any other trainer.

    >>> b = collate([[5, 6, 7]], [[0, 1, 1]], [[3]], pad_token_id=0)
    >>> b.labels.tolist(), b.position_ids.tolist()
    ([[-100, 6, 7]], [[0, 1, 2]])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.format import IGNORE_INDEX, SplitArrays


@dataclass
class Batch:
    """One padded batch: (rows, length) int64 arrays plus the counts the logs report."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    tokens: int  # real (non-padding) tokens
    supervised_tokens: int  # labels that are not IGNORE_INDEX
    # The sequences attention keeps apart (each sample with isolation on, each input row with it
    # off): flat index (row * width + column) of each one's first token, and its length.
    sequence_starts: np.ndarray | None = None
    sequence_lengths: np.ndarray | None = None
    segment_lengths: np.ndarray | None = None  # every sample (segment) of every row, isolation or not: model FLOPs

    @property
    def slots(self) -> int:
        """Positions the model computes, padding included."""
        return self.input_ids.size


def collate(ids_rows, mask_rows, segment_rows, pad_token_id: int, *, isolation: bool = True,
            flatten: bool = False, pad_to_multiple_of: int = 1) -> Batch:
    """Pad rows to the longest one; make labels and per-segment position ids.

    labels: the token where its loss mask is set, IGNORE_INDEX elsewhere: on padding
    and on the first token of every segment (it has no context inside its own
    sample). Labels are NOT shifted here: `train.head.shift_labels` is the one place
    where position t meets label t+1.

    position_ids restart at 0 with every segment when `isolation` is on; with
    position ids that restart and no attention mask, transformers blocks attention
    between segments (it reads a new sequence wherever positions do not go up by one).
    Padding continues the last segment's positions, so a row with one segment stays
    one sequence (and keeps the fast causal kernel). With isolation off, positions
    run 0..length-1 over the whole row, as in the source article.

    `flatten` joins the rows into one row (padding-free, as TRL's padding_free and
    DataCollatorWithFlattening): positions restart at every sample, or at every input
    row with isolation off, so attention sees exactly what it sees unflattened; labels
    are unchanged. `pad_to_multiple_of` rounds the width up (shapes repeat under
    torch.compile); a flattened row's padding tail is a sequence of its own.

    >>> b = collate([[5, 6, 7, 8, 9], [3, 4]], [[0, 1, 1, 0, 1], [1, 1]], [[3, 2], [2]], pad_token_id=0)
    >>> b.input_ids.tolist(), b.labels.tolist()
    ([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]], [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]])
    >>> b.position_ids.tolist(), b.tokens, b.supervised_tokens
    ([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]], 7, 4)
    >>> collate([[5, 6, 7, 8, 9]], [[0, 1, 1, 0, 1]], [[3, 2]], 0, isolation=False).position_ids.tolist()
    [[0, 1, 2, 3, 4]]
    >>> f = collate([[5, 6, 7, 8, 9], [3, 4]], [[0, 1, 1, 0, 1], [1, 1]], [[3, 2], [2]], 0, flatten=True,
    ...             pad_to_multiple_of=4)
    >>> f.input_ids.tolist(), f.position_ids.tolist(), f.sequence_starts.tolist(), f.sequence_lengths.tolist()
    ([[5, 6, 7, 8, 9, 3, 4, 0]], [[0, 1, 2, 0, 1, 0, 1, 0]], [0, 3, 5], [3, 2, 2])
    """
    row_lengths = np.fromiter((len(r) for r in ids_rows), dtype=np.int64, count=len(ids_rows))
    segment_lengths = np.concatenate([np.asarray(s, dtype=np.int64) for s in segment_rows])
    segments_per_row = np.fromiter((len(s) for s in segment_rows), dtype=np.int64, count=len(segment_rows))
    if flatten:
        ids_rows, mask_rows = [np.concatenate(ids_rows)], [np.concatenate(mask_rows)]
        segments_per_row = np.array([len(segment_lengths)])
        sequence_lengths = segment_lengths if isolation else row_lengths
        lengths = np.array([row_lengths.sum()])
    else:
        lengths = row_lengths
        sequence_lengths = segment_lengths if isolation else row_lengths
    rows, width = len(lengths), int(lengths.max())
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((rows, width), pad_token_id, dtype=np.int64)
    loss_mask = np.zeros((rows, width), dtype=bool)
    for i, (ids, mask) in enumerate(zip(ids_rows, mask_rows)):  # one copy per row, never per token
        input_ids[i, : lengths[i]] = ids
        loss_mask[i, : lengths[i]] = mask
    loss_mask.flat[_flat_starts(segment_lengths, segments_per_row, lengths, width)] = False
    labels = np.where(loss_mask, input_ids, IGNORE_INDEX)
    sequences_per_row = segments_per_row if isolation else (np.array([len(row_lengths)]) if flatten
                                                             else np.ones(rows, dtype=np.int64))
    sequence_starts = _flat_starts(sequence_lengths, sequences_per_row, lengths, width)
    position_ids = _position_ids(sequence_starts, sequence_lengths, (rows, width), int(lengths[0]) if flatten else None)
    return Batch(input_ids, labels, position_ids, int(lengths.sum()), int(loss_mask.sum()),
                 sequence_starts, sequence_lengths, segment_lengths)


def _position_ids(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int],
                  flat_length: int | None) -> np.ndarray:
    """Positions that go up by one and restart at 0 with every sequence (flat `starts`, `lengths`).

    `flat_length`: a flattened row's real tokens; its padding tail after them is a sequence of its own.
    """
    rows, width = shape
    if flat_length is not None and width > flat_length:  # the padding tail: its own sequence, positions from 0
        starts, lengths = np.append(starts, flat_length), np.append(lengths, width - flat_length)
    # A running sum of +1 steps, with a step back to 0 at every sequence that does not open its row.
    steps = np.ones((rows, width), dtype=np.int64)
    later = starts % width > 0
    steps.flat[starts[later]] = 1 - lengths[np.flatnonzero(later) - 1]
    return np.cumsum(steps, axis=1) - 1


def _flat_starts(segment_lengths: np.ndarray, segments_per_row: np.ndarray, row_lengths: np.ndarray,
                 width: int) -> np.ndarray:
    """Flat index (row * width + column) of the first token of every segment."""
    row_of_segment = np.repeat(np.arange(len(row_lengths)), segments_per_row)
    row_token_base = np.concatenate([[0], np.cumsum(row_lengths)[:-1]])
    column = np.cumsum(segment_lengths) - segment_lengths - row_token_base[row_of_segment]
    return row_of_segment * width + column


def gather_rows(split: SplitArrays, rows: np.ndarray) -> tuple[list, list, list]:
    """Zero-copy views of the chosen rows' tokens, loss masks and segment lengths."""
    chosen = split.rows(rows)
    return [r.input_ids for r in chosen], [r.loss_mask for r in chosen], [r.segment_lengths for r in chosen]


def get_rows_batch(split: SplitArrays, rows: np.ndarray, pad_token_id: int, isolation: bool, **options) -> Batch:
    """Collate the chosen rows; `options` are `collate`'s keywords (flatten, pad_to_multiple_of)."""
    return collate(*gather_rows(split, rows), pad_token_id=pad_token_id, isolation=isolation, **options)

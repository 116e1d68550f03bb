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

    @property
    def slots(self) -> int:
        """Positions the model computes, padding included."""
        return self.input_ids.size


def collate(ids_rows, mask_rows, segment_rows, pad_token_id: int, isolation: bool = True) -> Batch:
    """Pad rows to the longest one; make labels and per-segment position ids.

    labels: the token where its loss mask is set, IGNORE_INDEX elsewhere: on padding
    and on the first token of every segment (it has no context inside its own
    sample). Labels are NOT shifted here: `train.loop.token_losses` is the one place
    where position t's logits meet label t+1.

    position_ids restart at 0 with every segment when `isolation` is on; with
    position ids that restart and no attention mask, transformers blocks attention
    between segments (it reads a new sequence wherever positions do not go up by one).
    Padding continues the last segment's positions, so a row with one segment stays
    one sequence (and keeps the fast causal kernel). With isolation off, positions
    run 0..length-1 over the whole row, as in the seed.

    >>> b = collate([[5, 6, 7, 8, 9], [3, 4]], [[0, 1, 1, 0, 1], [1, 1]], [[3, 2], [2]], pad_token_id=0)
    >>> b.input_ids.tolist(), b.labels.tolist()
    ([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]], [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]])
    >>> b.position_ids.tolist(), b.tokens, b.supervised_tokens
    ([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]], 7, 4)
    >>> collate([[5, 6, 7, 8, 9]], [[0, 1, 1, 0, 1]], [[3, 2]], 0, isolation=False).position_ids.tolist()
    [[0, 1, 2, 3, 4]]
    """
    lengths = np.fromiter((len(r) for r in ids_rows), dtype=np.int64, count=len(ids_rows))
    rows, width = len(lengths), int(lengths.max())
    input_ids = np.full((rows, width), pad_token_id, dtype=np.int64)
    loss_mask = np.zeros((rows, width), dtype=bool)
    for i, (ids, mask) in enumerate(zip(ids_rows, mask_rows)):  # one copy per row, never per token
        input_ids[i, : lengths[i]] = ids
        loss_mask[i, : lengths[i]] = mask
    # Flat index (row * width + column) of the first token of every segment.
    segment_lengths = np.concatenate([np.asarray(s, dtype=np.int64) for s in segment_rows])
    segments_per_row = np.fromiter((len(s) for s in segment_rows), dtype=np.int64, count=rows)
    row_of_segment = np.repeat(np.arange(rows), segments_per_row)
    ends = np.cumsum(segment_lengths)
    row_token_base = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    column = ends - segment_lengths - row_token_base[row_of_segment]
    starts = row_of_segment * width + column

    loss_mask.flat[starts] = False
    labels = np.where(loss_mask, input_ids, IGNORE_INDEX)
    if isolation:
        # A running sum of +1 steps, with a step back to 0 at every segment that does not open its row.
        steps = np.ones((rows, width), dtype=np.int64)
        later = column > 0
        steps.flat[starts[later]] = 1 - segment_lengths[np.flatnonzero(later) - 1]
        position_ids = np.cumsum(steps, axis=1) - 1
    else:
        position_ids = np.broadcast_to(np.arange(width, dtype=np.int64), (rows, width)).copy()
    return Batch(input_ids, labels, position_ids, int(lengths.sum()), int(loss_mask.sum()))


def gather_rows(split: SplitArrays, rows: np.ndarray) -> tuple[list, list, list]:
    """Zero-copy views of the chosen rows' tokens, loss masks and segment lengths."""
    chosen = split.rows(rows)
    return [r.input_ids for r in chosen], [r.loss_mask for r in chosen], [r.segment_lengths for r in chosen]


def get_rows_batch(split: SplitArrays, rows: np.ndarray, pad_token_id: int, isolation: bool) -> Batch:
    return collate(*gather_rows(split, rows), pad_token_id=pad_token_id, isolation=isolation)

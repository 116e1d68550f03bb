"""Batches for the train stage, drawn from a memory-mapped shard set.

Nothing here tokenizes or packs: rows arrive as prep wrote them (unpadded, with
their segment lengths) and leave as padded tensors. The shard files stay
memory-mapped by `shards.format.ShardSet`; a batch copies only its own rows.

    >>> order = RowOrder(num_rows=10, batch_size=4, seed=0, shuffle=False)
    >>> [order.next_rows().tolist() for _ in range(3)], order.epoch, order.position
    ([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]], 1, 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.format import IGNORE_INDEX, ShardError, ShardSet, SplitArrays, rebuild_hint


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
    parts = split.parts()
    part_of_row, local = split.locate(rows)
    ids_rows, mask_rows, segment_rows = [], [], []
    for p, r in zip(part_of_row.tolist(), local.tolist()):
        part = parts[p]
        a, b = part["row_offsets"][r], part["row_offsets"][r + 1]
        sa, sb = part["segment_offsets"][r], part["segment_offsets"][r + 1]
        ids_rows.append(part["input_ids"][a:b])
        mask_rows.append(part["loss_mask"][a:b])
        segment_rows.append(part["segment_lengths"][sa:sb])
    return ids_rows, mask_rows, segment_rows


def get_rows_batch(split: SplitArrays, rows: np.ndarray, pad_token_id: int, isolation: bool) -> Batch:
    return collate(*gather_rows(split, rows), pad_token_id=pad_token_id, isolation=isolation)


def epoch_permutation(num_rows: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The row order of one epoch: a function of (seed, epoch) alone, so resuming needs no replay.

    >>> epoch_permutation(5, seed=0, epoch=0, shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    >>> sorted(epoch_permutation(5, seed=0, epoch=1, shuffle=True).tolist())
    [0, 1, 2, 3, 4]
    """
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


class RowOrder:
    """Hands out the rows of successive micro-batches (all processes together), epoch after epoch.

    An epoch is `num_rows // batch_size` full micro-batches; the remainder of its
    permutation is dropped (a different remainder each shuffled epoch). The state
    is (epoch, position): position counts micro-batches already drawn this epoch.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool, epoch: int = 0, position: int = 0):
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.batches_per_epoch = num_rows // batch_size
        self.epoch, self.position = epoch, position
        self._permutation_epoch, self._permutation = None, None

    def next_rows(self) -> np.ndarray:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self._permutation_epoch != self.epoch:
            self._permutation = epoch_permutation(self.num_rows, self.seed, self.epoch, self.shuffle)
            self._permutation_epoch = self.epoch
        start = self.position * self.batch_size
        self.position += 1
        return self._permutation[start : start + self.batch_size]


def rank_share(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's contiguous part of a micro-batch drawn for all processes.

    >>> rank_share(np.arange(8), rank=1, world_size=2).tolist()
    [4, 5, 6, 7]
    """
    share = len(rows) // world_size
    return rows[rank * share : (rank + 1) * share]


def val_row_batches(split: SplitArrays, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """This process's validation rows, sorted by length (less padding), in batches.

    Together the processes cover every row exactly once.

    >>> # val_row_batches(split, 4) -> [array([...4 rows...]), ..., array([...rest...])]
    """
    order = np.argsort(split.row_lengths(), kind="stable")[rank::world_size]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def per_row_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of each row's slice of a flat array (CSR offsets from 0); 0 for an empty row.

    >>> per_row_sum(np.array([3, 2, 5]), np.array([0, 2, 2, 3])).tolist()
    [5, 0, 5]
    """
    return np.diff(np.concatenate([[0], np.cumsum(values, dtype=np.int64)])[offsets])


def check_shards(shard_set: ShardSet, vocab_size: int) -> int:
    """Refuse rows the trainer cannot use; return the largest token id.

    Checked part by part, vectorised, without copying token buffers: every row is
    1..max_length tokens, its loss mask as long as its tokens, its segment lengths
    positive and summing to its length, every token id below `vocab_size` (the
    model's embedding rows). The val split must have rows.
    """
    manifest = shard_set.manifest
    hint = rebuild_hint(manifest)
    max_length = int(manifest["max_length"])
    largest = -1
    for name in ("train", "val"):
        split = shard_set.split(name)
        if split.num_rows == 0:
            raise ShardError(f"{shard_set.folder}: the {name} split has no rows; {hint}")
        first_row = 0  # rows are numbered across the split's parts, as SplitArrays numbers them
        for part in split.parts():
            row_offsets, segment_offsets = part["row_offsets"], part["segment_offsets"]
            lengths = np.diff(row_offsets).astype(np.int64)
            local = segment_offsets - segment_offsets[0]
            segments = part["segment_lengths"][segment_offsets[0] : segment_offsets[-1]].astype(np.int64)
            bad = ((lengths < 1) | (lengths > max_length) | (per_row_sum(segments, local) != lengths)
                   | (per_row_sum(segments < 1, local) > 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                pieces = segments[local[row] : local[row + 1]].tolist()
                raise ShardError(f"{shard_set.folder}: {name} row {first_row + row} is malformed: {lengths[row]} "
                                 f"tokens (max_length {max_length}), segment lengths {pieces}; {hint}")
            if len(part["loss_mask"]) < row_offsets[-1]:
                raise ShardError(f"{shard_set.folder}: a {name} loss_mask column is shorter than input_ids; {hint}")
            largest = max(largest, int(part["input_ids"][row_offsets[0] : row_offsets[-1]].max()))
            first_row += len(lengths)
    if largest >= vocab_size:
        raise ShardError(f"{shard_set.folder}: token id {largest} is outside the model's vocabulary of "
                         f"{vocab_size} rows (shards made with another tokenizer?); {hint}")
    return largest

"""Which rows the train stage draws, and the checks it makes on a shard set before training.

Nothing here tokenizes or packs; `shards.batch` turns the drawn rows into padded
arrays. The shard files stay memory-mapped by `shards.format.ShardSet`.

    >>> order = RowOrder(num_rows=10, batch_size=4, seed=0, shuffle=False)
    >>> [order.next_rows().tolist() for _ in range(3)], order.epoch, order.position
    ([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]], 1, 1)
"""
from __future__ import annotations

import numpy as np

from shards.format import ShardError, ShardSet, SplitArrays, per_row_sum, rebuild_hint
from shards.order import epoch_rows


class RowOrder:
    """Hands out the rows of successive micro-batches (all processes together), epoch after epoch.

    An epoch is `num_rows // batch_size` full micro-batches; the remainder of its
    permutation is dropped (a different remainder each shuffled epoch). With `lengths`
    (each row's), the batches are grouped by length (`shards.order.group_by_length`).
    The state is (epoch, position): position counts micro-batches already drawn this epoch;
    an epoch's order is a function of (seed, epoch), so a resume needs no replay.
    """

    def __init__(self, num_rows: int, batch_size: int, *, seed: int, shuffle: bool, epoch: int = 0, position: int = 0,
                 lengths: np.ndarray | None = None):
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.lengths = lengths
        self.batches_per_epoch = num_rows // batch_size
        self.epoch, self.position = epoch, position
        self._permutation_epoch, self._permutation = None, None

    def next_rows(self) -> np.ndarray:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self._permutation_epoch != self.epoch:
            lengths = self.lengths if self.lengths is not None else np.zeros(self.num_rows, dtype=np.int64)
            self._permutation = epoch_rows(lengths, self.batch_size, seed=self.seed, epoch=self.epoch,
                                           shuffle=self.shuffle, grouped=self.lengths is not None)
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


def check_shards(shard_set: ShardSet, vocab_size: int) -> int:
    """Refuse rows the trainer cannot use; return the largest token id.

    Checked part by part, vectorised, without copying token buffers: every row is
    1..max_length tokens, its loss mask as long as its tokens, its segment lengths
    positive and summing to its length, every token id below `vocab_size` (the
    model's embedding rows). The val split must have rows.
    """
    manifest = shard_set.manifest
    hint = rebuild_hint(manifest)
    max_length = manifest.max_length
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


def check_same_shards(shard_set: ShardSet, rank: int, world_size: int) -> None:
    """Refuse to train when the processes (on one node or several) read different shard sets.

    Every rank gathers every rank's manifest fingerprint, so all of them stop with the same
    error (none is left waiting in a collective). Paths may differ: a copy of the set matches.
    """
    if world_size == 1:
        return
    import socket

    import torch.distributed

    seen = [None] * world_size
    mine = (shard_set.manifest.fingerprint(), str(shard_set.folder), socket.gethostname())
    torch.distributed.all_gather_object(seen, mine)
    if len({fingerprint for fingerprint, _, _ in seen}) > 1:
        ranks = "; ".join(f"rank {r} on {host}: {folder} (fingerprint {fingerprint[:12]})"
                          for r, (fingerprint, folder, host) in enumerate(seen))
        raise ShardError(f"the processes read different shard sets ({ranks}); every node must read the same set: "
                         f"put it on a shared file system or copy the one folder to each node (rsync -a)")

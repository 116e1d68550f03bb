"""The order rows are drawn in, epoch by epoch: a seeded permutation, optionally grouped by length.

`python -m train` (train.data.RowOrder) and `ShardDataset.sampler` (other trainers) draw through
these two functions, so both give the same batches for the same seed.

    >>> epoch_rows(np.array([5, 1, 9, 2, 8, 3]), batch_size=2, seed=0, epoch=0, shuffle=False).tolist()
    [0, 1, 2, 3, 4, 5]
"""
from __future__ import annotations

import numpy as np

MEGA_BATCH = 50  # batches per sorted group: Hugging Face's LengthGroupedSampler's default mega-batch


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


def group_by_length(rows: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                    mega_batch: int = MEGA_BATCH) -> np.ndarray:
    """`rows` (whole batches of them) regrouped so each batch holds rows of similar length.

    Hugging Face's `LengthGroupedSampler` idea: the rows, in their order, are cut into mega-batches
    of `batch_size * mega_batch`; each is sorted by length, longest first, and cut into batches;
    then the batches of the whole epoch are shuffled (seeded by (seed, epoch)), so neither long nor
    short batches come all at once. The same rows, in other batches: padding a batch to its longest
    row then wastes little. `lengths[row]`: each row's length.

    >>> group_by_length(np.array([0, 1, 2, 3, 4, 5]), np.array([5, 1, 9, 2, 8, 3]), 2, seed=0, epoch=0,
    ...                 mega_batch=3).reshape(-1, 2).tolist()
    [[0, 5], [3, 1], [2, 4]]
    """
    batches = []
    span = batch_size * mega_batch
    for start in range(0, len(rows), span):
        mega = rows[start : start + span]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    shuffled = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
    return np.concatenate([batches[i] for i in shuffled]) if batches else rows[:0]


def epoch_rows(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, shuffle: bool,
               grouped: bool = False) -> np.ndarray:
    """The rows one epoch draws, `len(lengths) // batch_size` whole batches of them, in order.

    The permutation's remainder (fewer rows than a batch) is dropped, a different one each shuffled
    epoch; `grouped` regroups the kept rows by length (`group_by_length`), the same rows either way.
    """
    kept = epoch_permutation(len(lengths), seed, epoch, shuffle)[: len(lengths) // batch_size * batch_size]
    return group_by_length(kept, lengths, batch_size, seed, epoch) if grouped else kept

"""Which tokens of which sample go in which training row: pure functions over sample lengths.

Three layouts of the same samples, all as a `Layout` (rows of pieces of samples):

* `pack_padding`: one sample per row, truncated to `max_length`.
* `pack_packed`: pretraining style; the samples, concatenated in order, cut every
  `max_length` tokens, so samples are split across rows.
* `pack_concat`: whole samples bin-packed into rows of at most `max_length` tokens.

`lower_bound_rows` says how far `pack_concat` is from any whole-sample packing, and
`shuffle_rows` permutes rows. Nothing here reads or writes files.

>>> layout = pack_concat([5, 3, 2, 4, 6], max_length=10)
>>> layout.num_rows, lower_bound_rows([5, 3, 2, 4, 6], capacity=10)
(2, 2)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from prep import binpack

# The three layouts; the field's names for them: packed is TRL's "wrapped", concat its "bfd".
Mode = Literal["padding", "packed", "concat"]
# bfd: best-fit decreasing + repair; greedy: the source article's two-pointer greedy; seed: greedy's old name
Packer = Literal["bfd", "greedy", "seed"]
PACKERS = get_args(Packer)
DEPRECATED_PACKERS = {"seed": "greedy"}  # old name -> new name, accepted for one release


@dataclass(frozen=True, eq=False)  # no field-wise ==: it would compare arrays elementwise
class Layout:
    """Rows as pieces of samples, CSR form: row r holds pieces row_offsets[r]:row_offsets[r+1];
    piece k is tokens [start[k], stop[k]) of sample `sample[k]`.

    >>> layout = Layout(row_offsets=[0, 2, 3], sample=[0, 1, 1], start=[0, 0, 2], stop=[3, 2, 5])
    >>> layout.num_rows, layout.row_lengths().tolist(), layout.samples_split()
    (2, [5, 3], 1)
    """

    row_offsets: np.ndarray  # int64, num_rows + 1
    sample: np.ndarray  # int64, sample index into the `lengths` array
    start: np.ndarray  # int64
    stop: np.ndarray  # int64

    def __post_init__(self) -> None:
        for name in ("row_offsets", "sample", "start", "stop"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    def row_lengths(self) -> np.ndarray:
        """Tokens in each row.

        >>> pack_padding([3, 9], max_length=4).row_lengths().tolist()
        [3, 4]
        """
        # Prefix sums rather than np.add.reduceat, which misreads empty rows.
        tokens_before = np.concatenate(([0], np.cumsum(self.stop - self.start)))
        return tokens_before[self.row_offsets[1:]] - tokens_before[self.row_offsets[:-1]]

    def samples_split(self) -> int:
        """Number of samples whose tokens are spread over more than one row.

        >>> pack_packed([3, 5, 2], max_length=4).samples_split()
        1
        """
        row = np.repeat(np.arange(self.num_rows), np.diff(self.row_offsets))
        order = np.lexsort((row, self.sample))
        sample, row = self.sample[order], row[order]
        moved_on = (sample[1:] == sample[:-1]) & (row[1:] != row[:-1])
        return int(np.unique(sample[1:][moved_on]).size)


def pack_padding(lengths: ArrayLike, max_length: int) -> Layout:
    """One row per sample, each truncated to `max_length`.

    >>> layout = pack_padding([3, 9, 5], max_length=4)
    >>> layout.sample.tolist(), layout.stop.tolist()
    ([0, 1, 2], [3, 4, 4])
    """
    lengths = _checked_lengths(lengths, max_length, must_fit=False)
    count = len(lengths)
    return Layout(np.arange(count + 1), np.arange(count), np.zeros(count), np.minimum(lengths, max_length))


def pack_packed(lengths: ArrayLike, max_length: int) -> Layout:
    """All samples concatenated in order and cut every `max_length` tokens; the last row may be shorter.

    >>> layout = pack_packed([3, 5, 2], max_length=4)
    >>> layout.row_offsets.tolist(), layout.row_lengths().tolist()
    ([0, 2, 3, 4], [4, 4, 2])
    >>> [(int(s), int(a), int(b)) for s, a, b in zip(layout.sample, layout.start, layout.stop)]
    [(0, 0, 3), (1, 0, 1), (1, 1, 5), (2, 0, 2)]
    """
    lengths = _checked_lengths(lengths, max_length, must_fit=False)
    if not len(lengths):
        return pack_padding(lengths, max_length)
    sample_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    total = int(lengths.sum())
    row_starts = np.arange(0, total, max_length)
    # A piece begins wherever a sample or a row begins, in stream positions.
    piece_starts = np.union1d(sample_starts, row_starts)
    piece_stops = np.append(piece_starts[1:], total)
    sample = np.searchsorted(sample_starts, piece_starts, side="right") - 1
    row_offsets = np.append(np.searchsorted(piece_starts, row_starts), len(piece_starts))
    return Layout(row_offsets, sample, piece_starts - sample_starts[sample], piece_stops - sample_starts[sample])


def packer_name(packer: str) -> str:
    """The packer's current name: a deprecated alias is replaced, with a one-line notice on stderr.

    >>> packer_name("bfd")
    'bfd'
    """
    if packer not in DEPRECATED_PACKERS:
        return packer
    new = DEPRECATED_PACKERS[packer]
    print(f"note: --packer {packer} is deprecated; it is now --packer {new} (the same packing)", file=sys.stderr)
    return new


def pack_concat(lengths: ArrayLike, max_length: int, packer: str = "bfd") -> Layout:
    """Whole samples bin-packed into rows of at most `max_length` tokens; no sample is split.

    packer "bfd": best-fit decreasing over all samples, then a repair that repacks by minimum
    bin slack and keeps whichever packing has fewer rows. packer "greedy" (the source article's;
    "seed" is its deprecated name): the longest remaining sample opens a row, the shortest
    remaining ones fill it while they fit.

    >>> layout = pack_concat([5, 3, 2, 4, 6], max_length=10)
    >>> [layout.sample[a:b].tolist() for a, b in zip(layout.row_offsets[:-1], layout.row_offsets[1:])]
    [[4, 3], [0, 1, 2]]
    >>> pack_concat([5, 3, 2, 4, 6], max_length=10, packer="greedy").row_lengths().tolist()
    [8, 8, 4]
    >>> pack_concat([5, 11], max_length=10)
    Traceback (most recent call last):
    ...
    ValueError: sample 1 has length 11 > max_length 10; truncate or drop it before packing whole samples
    """
    lengths = _checked_lengths(lengths, max_length, must_fit=True)
    packer = packer_name(packer)
    if packer == "bfd":
        order = _longest_first(lengths, max_length)
        sizes = lengths[order]
        bins = binpack.repaired(sizes, max_length, binpack.best_fit_decreasing(sizes, max_length))
    elif packer == "greedy":
        order = np.argsort(lengths, kind="stable")
        bins = binpack.longest_then_shortest(lengths[order], max_length)
    else:
        raise ValueError(f"packer must be one of bfd, greedy, got {packer!r}")
    return _whole_sample_rows(order, bins, lengths)


def lower_bound_rows(lengths: ArrayLike, capacity: int) -> int:
    """Martello–Toth L2 lower bound on the rows of any packing of whole samples into `capacity`.

    >>> lower_bound_rows([6, 6, 6], capacity=10)  # the token count alone says 2
    3
    >>> lower_bound_rows([5, 5, 5, 5], capacity=10)
    2
    """
    lengths = _checked_lengths(lengths, capacity, must_fit=True)
    count_at_least = np.append(np.cumsum(np.bincount(lengths, minlength=capacity + 1)[::-1])[::-1], 0)
    tokens_below = np.concatenate(([0], np.cumsum(np.bincount(lengths, weights=lengths, minlength=capacity + 1))))
    tokens_below = tokens_below.astype(np.int64)
    half = capacity // 2
    k = np.arange(half + 1)  # the bound holds for every threshold k <= capacity / 2; take the best
    alone = count_at_least[capacity - k + 1]  # longer than capacity - k: nothing of length >= k fits beside
    large = count_at_least[half + 1] - alone  # over half: one per row, some room left
    large_tokens = tokens_below[capacity - k + 1] - tokens_below[half + 1]
    small_tokens = tokens_below[half + 1] - tokens_below[k]
    overflow = np.maximum(0, small_tokens - (large * capacity - large_tokens))
    return int(np.max(alone + large - (-overflow // capacity)))


def shuffle_rows(layout: Layout, seed: int) -> Layout:
    """Rows in the order of `np.random.default_rng(seed).permutation`; pieces move with their row.

    >>> layout = shuffle_rows(pack_padding([1, 2, 3, 4], max_length=8), seed=0)
    >>> sorted(layout.sample.tolist()) == [0, 1, 2, 3], layout.row_lengths().tolist() == layout.stop.tolist()
    (True, True)
    """
    permutation = np.random.default_rng(seed).permutation(layout.num_rows)
    counts = np.diff(layout.row_offsets)[permutation]
    row_offsets = np.concatenate(([0], np.cumsum(counts)))
    pieces = np.repeat(layout.row_offsets[permutation] - row_offsets[:-1], counts) + np.arange(row_offsets[-1])
    return Layout(row_offsets, layout.sample[pieces], layout.start[pieces], layout.stop[pieces])


# --------------------------------------------------------------------------- helpers


def _checked_lengths(lengths: ArrayLike, max_length: int, must_fit: bool) -> np.ndarray:
    """`lengths` as int64, or a ValueError that names the first bad sample.

    >>> _checked_lengths([3, 0, 2], 8, must_fit=False)
    Traceback (most recent call last):
    ...
    ValueError: sample 1 has length 0; every sample needs at least one token
    """
    if int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    array = np.asarray(lengths)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"lengths must be a 1-D array of integers, got {array.dtype} of shape {array.shape}")
    array = array.astype(np.int64)
    bad = (array <= 0) | (array > max_length) if must_fit else array <= 0
    if bad.any():
        index = int(np.argmax(bad))
        if array[index] <= 0:
            raise ValueError(f"sample {index} has length {array[index]}; every sample needs at least one token")
        raise ValueError(f"sample {index} has length {array[index]} > max_length {max_length}; "
                         "truncate or drop it before packing whole samples")
    return array


def _longest_first(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Sample indices by decreasing length; equal lengths keep their order.

    >>> _longest_first(np.array([2, 5, 2, 7]), 8).tolist()
    [3, 1, 0, 2]
    """
    # numpy's stable sort is a linear radix sort for 16-bit keys, a merge sort for wider ones.
    key_type = np.uint16 if max_length < 2**16 else np.int64
    return np.argsort((max_length - lengths).astype(key_type), kind="stable")


def _whole_sample_rows(order: np.ndarray, bins: np.ndarray, lengths: np.ndarray) -> Layout:
    """Layout whose row r holds the samples `order[i]` with `bins[i] == r`, in position order.

    >>> _whole_sample_rows(np.array([2, 0, 1]), np.array([1, 0, 1]), np.array([3, 4, 5])).sample.tolist()
    [0, 2, 1]
    """
    sample = order[np.argsort(bins, kind="stable")]
    num_rows = int(bins.max()) + 1 if len(bins) else 0
    row_offsets = np.concatenate(([0], np.cumsum(np.bincount(bins, minlength=num_rows))))
    return Layout(row_offsets, sample, np.zeros(len(sample)), lengths[sample])

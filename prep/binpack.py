"""Bin packing of sizes into bins of a fixed capacity: the algorithms behind `pack_concat`.

Pure functions from sorted sizes (longest first) to a bin index per item; `prep.packing`
turns those into rows of samples. Written here by hand because no library packs tens of
millions of items this close to optimal in seconds (they solve small exact instances).

>>> best_fit_decreasing(np.array([6, 5, 4, 3, 2]), capacity=10).tolist()  # bins 6+4, 5+3+2
[0, 1, 0, 1, 1]
"""
from __future__ import annotations

import bisect

import numpy as np

# Machine words the minimum-slack repair may shift (some 0.3 s); past it, the samples it has
# not placed go to new rows by best-fit decreasing. Chat data at max_length 1024 needs under
# a million; only thousands of distinct lengths over a max_length of 8k or more reach it.
REPAIR_WORD_BUDGET = 50_000_000


def _runs(sizes: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Equal values of a sorted array as (value, first position, count) lists.

    >>> _runs(np.array([7, 5, 5, 2]))
    ([7, 5, 2], [0, 1, 3], [1, 2, 1])
    """
    if not len(sizes):
        return [], [], []
    firsts = np.flatnonzero(np.concatenate(([True], sizes[1:] != sizes[:-1])))
    counts = np.diff(np.append(firsts, len(sizes)))
    return sizes[firsts].tolist(), firsts.tolist(), counts.tolist()


class _BinsByRoom:
    """Open bins grouped by their remaining room, plus a bitset of the rooms that have bins.

    The best fit for a sample is the smallest room >= its length: one shift and one
    lowest-set-bit on a max_length-bit integer, whatever the number of open bins.

    >>> bins = _BinsByRoom()
    >>> bins.put(7, [0, 1]); bins.put(3, [2])
    >>> bins.smallest_at_least(4), bins.smallest_at_least(8), bins.fill(7, 2, 3), bins.smallest_at_least(4)
    (7, None, [0, 1], 4)
    """

    def __init__(self) -> None:
        self.groups: dict[int, list[int]] = {}
        self.rooms = 0  # bit r set <=> groups[r] has bins

    def smallest_at_least(self, size: int) -> int | None:
        above = self.rooms >> size
        return size + (above & -above).bit_length() - 1 if above else None

    def count(self, room: int) -> int:
        return len(self.groups[room])

    def fill(self, room: int, count: int, tokens: int) -> list[int]:
        """Put `tokens` more into `count` bins that have `room`; returns their ids."""
        group = self.groups[room]
        taken = group[len(group) - count:]
        del group[len(group) - count:]
        if not group:
            self.rooms &= ~(1 << room)
        self.put(room - tokens, taken)
        return taken

    def put(self, room: int, bins: list[int]) -> None:
        if room and bins:  # a bin without room takes nothing more
            self.groups.setdefault(room, []).extend(bins)
            self.rooms |= 1 << room


def best_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each item, sizes sorted decreasing: each item goes to the open bin with the least room that fits it.

    Items of one size are placed together: a bin with room r takes r // size of them in a
    row (it stays the best fit until its room drops below size), so the loop runs per
    (size, room) pair, not per item.

    >>> best_fit_decreasing(np.array([7, 5, 3, 3, 2, 2]), capacity=10).tolist()
    [0, 1, 0, 1, 1, 2]
    """
    open_bins = _BinsByRoom()
    chunks: list[np.ndarray] = []
    num_bins = 0
    for size, _, count in zip(*_runs(sizes)):
        while count:
            room = open_bins.smallest_at_least(size)
            if room is None:  # no bin fits: open as many as the rest of this size needs
                per_bin = capacity // size
                new = -(-count // per_bin)
                ids = list(range(num_bins, num_bins + new))
                num_bins += new
                chunks.append(np.repeat(ids, per_bin)[:count])
                open_bins.put(capacity - per_bin * size, ids[:-1])
                open_bins.put(capacity - (count - (new - 1) * per_bin) * size, ids[-1:])
                break
            per_bin = room // size
            filled = min(open_bins.count(room), count // per_bin)
            if filled:
                chunks.append(np.repeat(open_bins.fill(room, filled, per_bin * size), per_bin))
                count -= filled * per_bin
            if 0 < count < per_bin and open_bins.count(room):
                chunks.append(np.repeat(open_bins.fill(room, 1, count * size), count))
                count = 0
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def _fullest_subset(counts: dict[int, int], sizes: list[int], room: int) -> tuple[dict[int, int], int]:
    """Subset of the available items (counts by size, sizes ascending) that fills `room` the most.

    Bounded subset sum on a bitset (bit t: some subset sums to t), one shift-or per copy
    of a size; stops at the first size that makes `room` exact. Returns the subset as
    {size: copies} and the machine words it shifted.

    >>> _fullest_subset({2: 3, 5: 1, 9: 1}, [2, 5, 9], room=6)
    ({2: 3}, 4)
    >>> _fullest_subset({2: 3, 5: 1, 9: 1}, [2, 5, 9], room=8)  # no subset makes 8
    ({5: 1, 2: 1}, 4)
    """
    reachable, before, words = 1, [], 0
    window = (1 << (room + 1)) - 1
    for size in reversed(sizes[:bisect.bisect_right(sizes, room)]):
        copies = min(counts[size], room // size)
        before.append((size, reachable))
        for _ in range(copies):
            reachable |= reachable << size
        reachable &= window
        words += copies * (room // 64 + 1)
        if reachable >> room & 1:
            break
    subset, rest = {}, reachable.bit_length() - 1
    for size, earlier in reversed(before):
        copies = 0
        while not earlier >> (rest - copies * size) & 1:
            copies += 1
        if copies:
            subset[size], rest = copies, rest - copies * size
    return dict(reversed(subset.items())), words


def _min_slack_patterns(counts: dict[int, int], capacity: int, budget: int) -> tuple[list, dict[int, int]]:
    """Minimum bin slack on the size histogram: the longest item left opens a bin and the
    fullest subset of the others fills it. The same bin repeats while its items last (it stays
    the fullest: items only run out), so the loop runs per distinct bin, not per bin.

    Returns [(repeats, {size: per bin})] and the counts not yet placed when `budget`
    (machine words shifted, see `_fullest_subset`) ran out.

    >>> _min_slack_patterns({6: 2, 4: 2, 3: 2, 1: 2}, capacity=10, budget=100)
    ([(2, {6: 1, 4: 1}), (1, {3: 2, 1: 2})], {})
    """
    counts, sizes, patterns = dict(counts), sorted(s for s in counts if counts[s]), []
    while sizes and budget > 0:
        largest = sizes[-1]
        counts[largest] -= 1
        subset, words = _fullest_subset(counts, sizes, capacity - largest)
        counts[largest] += 1
        budget -= words
        subset = {largest: subset.pop(largest, 0) + 1, **subset}
        repeats = min(counts[size] // per_bin for size, per_bin in subset.items())
        for size, per_bin in subset.items():
            counts[size] -= repeats * per_bin
            if not counts[size]:
                del sizes[bisect.bisect_left(sizes, size)]
        patterns.append((repeats, subset))
    return patterns, {size: counts[size] for size in sizes}


def min_slack(sizes: np.ndarray, capacity: int, budget: int = REPAIR_WORD_BUDGET) -> np.ndarray:
    """Bin of each item (sizes sorted decreasing) by minimum bin slack; items it had no
    budget left for go to new bins by best-fit decreasing.

    >>> min_slack(np.array([6, 6, 4, 4, 3, 3, 1, 1]), capacity=10).tolist()
    [0, 1, 0, 1, 2, 2, 2, 2]
    """
    values, firsts, counts = _runs(sizes)
    patterns, _ = _min_slack_patterns(dict(zip(values, counts)), capacity, budget)
    ids_by_size: dict[int, list[np.ndarray]] = {size: [] for size in values}
    num_bins = 0
    for repeats, subset in patterns:
        for size, per_bin in subset.items():
            ids_by_size[size].append(np.repeat(np.arange(num_bins, num_bins + repeats), per_bin))
        num_bins += repeats
    bins = np.empty(len(sizes), np.int64)
    left: list[np.ndarray] = []
    for size, first, count in zip(values, firsts, counts):
        ids = np.concatenate(ids_by_size[size]) if ids_by_size[size] else np.zeros(0, np.int64)
        bins[first:first + len(ids)] = ids
        left.append(np.arange(first + len(ids), first + count))
    left_over = np.concatenate(left) if left else np.zeros(0, np.int64)
    bins[left_over] = num_bins + best_fit_decreasing(sizes[left_over], capacity)
    return bins


def _num_bins(bins: np.ndarray) -> int:
    return int(bins.max()) + 1 if len(bins) else 0


def repaired(sizes: np.ndarray, capacity: int, bins: np.ndarray) -> np.ndarray:
    """The fewest bins of: `bins`; its full bins with the other items repacked by minimum
    slack; all items by minimum slack. Ties keep the earlier, so never worse than `bins`.

    Best-fit decreasing places each item for good; where the exact fills it missed add up
    (some +0.6% rows on chat data at max_length 256), minimum slack, which looks for
    them, recovers most.

    >>> sizes = np.array([5, 4, 3, 3, 3, 2])  # best: 5 3 2 | 4 3 3
    >>> bins = best_fit_decreasing(sizes, capacity=10)
    >>> bins.tolist(), repaired(sizes, 10, bins).tolist()
    ([0, 0, 1, 1, 1, 2], [0, 1, 0, 1, 1, 0])
    """
    full = np.bincount(bins, weights=sizes) == capacity
    kept = full[bins]
    mixed = np.empty_like(bins)
    mixed[kept] = (np.cumsum(full) - 1)[bins[kept]]
    mixed[~kept] = int(full.sum()) + min_slack(sizes[~kept], capacity)
    return min([bins, mixed, min_slack(sizes, capacity)], key=_num_bins)


def longest_then_shortest(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each item (sizes sorted increasing), the source article's two-pointer greedy (`--packer greedy`): the
    longest item left opens a bin, then the shortest left join it while they fit.

    >>> longest_then_shortest(np.array([2, 3, 4, 5, 6]), capacity=10).tolist()
    [0, 1, 2, 1, 0]
    """
    tokens_before = np.concatenate(([0], np.cumsum(sizes)))
    bins = np.empty(len(sizes), np.int64)
    low, high, row = 0, len(sizes) - 1, 0
    while low <= high:
        bins[high] = row
        room = capacity - int(sizes[high])
        high -= 1
        # The shortest items that fit one after another are a prefix of those left.
        end = int(np.searchsorted(tokens_before, tokens_before[low] + room, side="right")) - 1
        end = min(end, high + 1)
        bins[low:end] = row
        low, row = end, row + 1
    return bins

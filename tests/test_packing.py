"""prep.packing: literal cases for each layout, then properties over random lengths."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prep.binpack import best_fit_decreasing as _best_fit_decreasing, min_slack as _min_slack
from prep.packing import (
    Layout,
    lower_bound_rows,
    pack_concat,
    pack_packed,
    pack_padding,
    shuffle_rows,
)

MAX_LENGTHS = (1, 2, 8, 37, 256, 1024)
SEEDS = range(8)


def rows_of(layout: Layout) -> list[list[tuple[int, int, int]]]:
    """Each row as its (sample, start, stop) pieces."""
    pieces = list(zip(layout.sample.tolist(), layout.start.tolist(), layout.stop.tolist()))
    return [pieces[a:b] for a, b in zip(layout.row_offsets[:-1].tolist(), layout.row_offsets[1:].tolist())]


def random_lengths(seed: int, max_length: int, longest: int) -> np.ndarray:
    """A few hundred lengths at most, a mix of short samples and ones up to `longest`."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 300))
    short = rng.integers(1, max(2, max_length // 4) + 1, count)
    spread = rng.integers(1, longest + 1, count)
    return np.where(rng.random(count) < 0.5, short, spread).clip(1, longest)


def assert_well_formed(layout: Layout, max_length: int) -> None:
    for array in (layout.row_offsets, layout.sample, layout.start, layout.stop):
        assert array.dtype == np.int64 and array.ndim == 1
    assert layout.row_offsets[0] == 0 and layout.row_offsets[-1] == len(layout.sample)
    assert np.all(np.diff(layout.row_offsets) >= 1), "no empty rows"
    assert len(layout.sample) == len(layout.start) == len(layout.stop)
    assert np.all(layout.start < layout.stop)
    assert np.all(layout.row_lengths() <= max_length)


def best_fit_decreasing_rows(lengths: np.ndarray, capacity: int) -> int:
    """Textbook best-fit decreasing, one item at a time over a list of rooms."""
    rooms: list[int] = []
    for length in sorted(lengths.tolist(), reverse=True):
        fits = [i for i, room in enumerate(rooms) if room >= length]
        if fits:
            best = min(fits, key=lambda i: rooms[i])
            rooms[best] -= length
        else:
            rooms.append(capacity - length)
    return len(rooms)


def optimal_rows(lengths: list[int], capacity: int) -> int:
    """Exact minimum rows by dynamic programming over subsets (fine for ten items)."""
    best = {0: (0, capacity)}  # items placed -> (rows, tokens in the last row), least first
    for mask in range(1 << len(lengths)):
        rows, used = best[mask]
        for i, length in enumerate(lengths):
            if not mask >> i & 1:
                option = (rows, used + length) if used + length <= capacity else (rows + 1, length)
                best[mask | 1 << i] = min(best.get(mask | 1 << i, option), option)
    return best[(1 << len(lengths)) - 1][0]


# --------------------------------------------------------------------------- literal cases


def test_padding_literal():
    layout = pack_padding([3, 9, 5], max_length=4)
    assert rows_of(layout) == [[(0, 0, 3)], [(1, 0, 4)], [(2, 0, 4)]]
    assert layout.row_lengths().tolist() == [3, 4, 4]
    assert layout.samples_split() == 0


def test_packed_literal():
    layout = pack_packed([3, 5, 2], max_length=4)
    assert rows_of(layout) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 5)], [(2, 0, 2)]]
    assert layout.samples_split() == 1

    one_long = pack_packed([10], max_length=4)
    assert rows_of(one_long) == [[(0, 0, 4)], [(0, 4, 8)], [(0, 8, 10)]]
    assert one_long.samples_split() == 1

    exact = pack_packed([4, 4], max_length=4)
    assert rows_of(exact) == [[(0, 0, 4)], [(1, 0, 4)]]
    assert exact.samples_split() == 0


def test_concat_bfd_literal():
    layout = pack_concat([5, 3, 2, 4, 6], max_length=10)
    assert rows_of(layout) == [[(4, 0, 6), (3, 0, 4)], [(0, 0, 5), (1, 0, 3), (2, 0, 2)]]
    # Plain best-fit decreasing needs 3 rows here (5+4 | 3+3+3 | 2); the repair finds 5 3 2 | 4 3 3.
    repaired = pack_concat([5, 4, 3, 3, 3, 2], max_length=10)
    assert rows_of(repaired) == [[(0, 0, 5), (2, 0, 3), (5, 0, 2)], [(1, 0, 4), (3, 0, 3), (4, 0, 3)]]


def test_concat_seed_literal():
    layout = pack_concat([5, 3, 2, 4, 6], max_length=10, packer="greedy")
    assert rows_of(layout) == [[(2, 0, 2), (4, 0, 6)], [(1, 0, 3), (0, 0, 5)], [(3, 0, 4)]]


def test_lower_bound_literal():
    assert lower_bound_rows([], 10) == 0
    assert lower_bound_rows([6, 6, 6], 10) == 3  # tokens alone say 2
    assert lower_bound_rows([5, 5, 5, 5], 10) == 2
    assert lower_bound_rows([8, 8, 8, 3, 3], 10) == 4  # threshold 3: no 3 fits beside an 8


def test_shuffle_literal():
    layout = pack_packed([3, 5, 2], max_length=4)
    permutation = np.random.default_rng(7).permutation(layout.num_rows)
    assert rows_of(shuffle_rows(layout, seed=7)) == [rows_of(layout)[r] for r in permutation]


def test_empty_lengths():
    for layout in (pack_padding([], 8), pack_packed([], 8), pack_concat([], 8), pack_concat([], 8, packer="greedy")):
        assert layout.num_rows == 0 and layout.row_offsets.tolist() == [0] and layout.samples_split() == 0
    assert shuffle_rows(pack_concat([], 8), seed=0).num_rows == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("pack", [pack_padding, pack_packed, pack_concat, lower_bound_rows])
def test_non_positive_length_names_the_sample(pack):
    with pytest.raises(ValueError, match="sample 2 has length 0"):
        pack([3, 4, 0, -1], 8)
    with pytest.raises(ValueError, match="sample 1 has length -5"):
        pack([3, -5], 8)


@pytest.mark.parametrize("pack", [pack_concat, lower_bound_rows])
def test_too_long_length_names_the_sample(pack):
    with pytest.raises(ValueError, match="sample 3 has length 9 > max_length 8"):
        pack([8, 1, 2, 9, 10], 8)
    with pytest.raises(ValueError, match="sample 0 has length 0"):  # the first bad sample, whatever the fault
        pack([0, 9], 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="packer"):
        pack_concat([1, 2], 8, packer="ffd")
    with pytest.raises(ValueError, match="max_length"):
        pack_padding([1, 2], 0)
    with pytest.raises(ValueError, match="integers"):
        pack_packed([1.5, 2.0], 8)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_padding_one_row_per_sample(seed, max_length):
    lengths = random_lengths(seed, max_length, longest=2 * max_length)
    layout = pack_padding(lengths, max_length)
    assert_well_formed(layout, max_length)
    assert layout.sample.tolist() == list(range(len(lengths)))
    assert layout.num_rows == len(lengths)
    assert np.array_equal(layout.row_lengths(), np.minimum(lengths, max_length))


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_packed_covers_every_token_once_in_order(seed, max_length):
    lengths = random_lengths(seed, max_length, longest=3 * max_length)
    layout = pack_packed(lengths, max_length)
    assert_well_formed(layout, max_length)
    # Read in row order, the pieces are the token stream: each sample whole, in sample order.
    assert np.all(np.diff(layout.sample) >= 0)
    first = np.concatenate(([True], layout.sample[1:] != layout.sample[:-1]))
    last = np.concatenate((layout.sample[1:] != layout.sample[:-1], [True]))
    assert np.array_equal(layout.sample[first], np.arange(len(lengths)))
    assert np.all(layout.start[first] == 0)
    assert np.array_equal(layout.stop[last], lengths)
    assert np.array_equal(layout.start[~first], layout.stop[np.flatnonzero(~first) - 1])
    row_lengths = layout.row_lengths()
    assert np.all(row_lengths[:-1] == max_length)
    assert row_lengths.sum() == lengths.sum()
    assert layout.num_rows == math.ceil(lengths.sum() / max_length)


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_concat_packs_every_sample_once_within_bounds(seed, max_length):
    lengths = random_lengths(seed, max_length, longest=max_length)
    bound = lower_bound_rows(lengths, max_length)
    assert math.ceil(lengths.sum() / max_length) <= bound <= len(lengths)
    rows = {}
    for packer in ("bfd", "greedy"):
        layout = pack_concat(lengths, max_length, packer=packer)
        assert_well_formed(layout, max_length)
        assert np.array_equal(np.sort(layout.sample), np.arange(len(lengths)))
        assert np.all(layout.start == 0) and np.array_equal(layout.stop, lengths[layout.sample])
        assert layout.samples_split() == 0
        assert layout.num_rows >= bound
        rows[packer] = layout.num_rows
    assert rows["bfd"] <= rows["greedy"]
    assert rows["bfd"] <= best_fit_decreasing_rows(lengths, max_length)


@pytest.mark.parametrize("seed", range(40))
def test_bound_and_packing_around_the_optimum(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(4, 30))
    lengths = rng.integers(1, capacity + 1, int(rng.integers(1, 11)))
    optimum = optimal_rows(lengths.tolist(), capacity)
    assert lower_bound_rows(lengths, capacity) <= optimum <= pack_concat(lengths, capacity).num_rows


@pytest.mark.parametrize("seed", range(20))
def test_grouped_best_fit_decreasing_is_best_fit_decreasing(seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.choice([3, 10, 64, 100]))
    sizes = np.sort(rng.integers(1, capacity + 1, int(rng.integers(0, 200))))[::-1]
    bins = _best_fit_decreasing(sizes, capacity)
    assert len(bins) == len(sizes)
    assert np.all(np.bincount(bins, weights=sizes) <= capacity)
    assert (int(bins.max()) + 1 if len(bins) else 0) == best_fit_decreasing_rows(sizes, capacity)


@pytest.mark.parametrize("budget", [0, 1, 100, 10_000])
def test_min_slack_out_of_budget_still_packs_everything(budget):
    rng = np.random.default_rng(budget)
    sizes = np.sort(rng.integers(1, 100, 500))[::-1]
    bins = _min_slack(sizes, 100, budget=budget)
    assert len(bins) == len(sizes) and bins.min() == 0
    assert np.all(np.bincount(bins, weights=sizes) <= 100)
    assert np.array_equal(np.unique(bins), np.arange(bins.max() + 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_shuffle_rows_is_a_deterministic_permutation(seed):
    lengths = random_lengths(seed, 64, longest=64)
    layout = pack_concat(lengths, 64)
    shuffled = shuffle_rows(layout, seed=seed)
    again = shuffle_rows(layout, seed=seed)
    for name in ("row_offsets", "sample", "start", "stop"):
        assert np.array_equal(getattr(shuffled, name), getattr(again, name))
    assert sorted(rows_of(shuffled)) == sorted(rows_of(layout))
    permutation = np.random.default_rng(seed).permutation(layout.num_rows)
    assert rows_of(shuffled) == [rows_of(layout)[r] for r in permutation]
    if layout.num_rows > 5:
        assert rows_of(shuffle_rows(layout, seed=seed + 100)) != rows_of(shuffled)


def test_layout_helpers_with_a_split_sample():
    layout = Layout(row_offsets=[0, 2, 3, 5], sample=[0, 1, 1, 1, 2], start=[0, 0, 2, 4, 0], stop=[3, 2, 4, 6, 1])
    assert layout.num_rows == 3
    assert layout.row_lengths().tolist() == [5, 2, 3]
    assert layout.samples_split() == 1


def martello_toth_l2(lengths: list[int], capacity: int) -> int:
    """Martello & Toth (1990) L2, written from its definition: for each threshold k <= C/2,
    J1 = items > C - k, J2 = items in (C/2, C - k], J3 = items in [k, C/2];
    L(k) = |J1| + |J2| + max(0, ceil((sum J3 - (|J2| C - sum J2)) / C)); L2 = max over k."""
    best = 0
    for k in range(capacity // 2 + 1):
        j1 = [w for w in lengths if w > capacity - k]
        j2 = [w for w in lengths if capacity / 2 < w <= capacity - k]
        j3 = [w for w in lengths if k <= w <= capacity / 2]
        room = len(j2) * capacity - sum(j2)
        best = max(best, len(j1) + len(j2) + max(0, math.ceil((sum(j3) - room) / capacity)))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_lower_bound_rows_is_martello_toth_l2(seed):
    rng = np.random.default_rng(1000 + seed)
    capacity = int(rng.choice([2, 3, 7, 10, 31, 64, 101, 256]))
    lengths = rng.integers(1, capacity + 1, int(rng.integers(0, 60)))
    if seed % 3 == 0:  # many items near C/2 and C - k, where the thresholds matter
        lengths = np.clip(rng.normal(capacity / 2, capacity / 8, len(lengths)).round(), 1, capacity).astype(np.int64)
    assert lower_bound_rows(lengths, capacity) == martello_toth_l2(lengths.tolist(), capacity)


def test_seed_is_greedys_deprecated_name(capsys):
    """`--packer seed` (the old name) packs as `greedy` does, with a one-line notice on stderr."""
    old = pack_concat([5, 3, 2, 4, 6], max_length=10, packer="seed")
    assert capsys.readouterr().err == "note: --packer seed is deprecated; it is now --packer greedy (the same packing)\n"
    new = pack_concat([5, 3, 2, 4, 6], max_length=10, packer="greedy")
    assert old.row_lengths().tolist() == new.row_lengths().tolist() and capsys.readouterr().err == ""

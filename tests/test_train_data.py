"""Batches from memory-mapped shards: collation, row order, process shares, memory."""
from __future__ import annotations

import gc

import numpy as np
import pytest

from shards.format import IGNORE_INDEX, Rows, ShardSet
from tests.train_helpers import PAD, VOCAB, pack, synthetic_samples, write_rows_set, write_shard_set
from shards.batch import collate, gather_rows, get_rows_batch
from shards.order import epoch_permutation
from train.data import RowOrder, check_shards, rank_share, val_row_batches


def reference_collate(rows: list, pad: int, isolation: bool) -> dict:
    """The same batch, one token at a time: slow, obvious, for comparison."""
    width = max(len(r[0]) for r in rows)
    out = {k: np.full((len(rows), width), v, np.int64) for k, v in
           (("input_ids", pad), ("labels", IGNORE_INDEX), ("position_ids", 0))}
    for i, (ids, mask, segments, _) in enumerate(rows):
        t = 0
        for length in segments:
            for j in range(length):
                out["input_ids"][i, t] = ids[t]
                out["labels"][i, t] = ids[t] if mask[t] and j > 0 else IGNORE_INDEX
                out["position_ids"][i, t] = j if isolation else t
                t += 1
        for t in range(len(ids), width):  # padding continues the last segment's positions
            out["position_ids"][i, t] = (t - (len(ids) - segments[-1])) if isolation else t
    return out


def test_collate_literal_rows_of_each_mode():
    # padding: one sample per row; concat: whole samples; packed: a sample cut at the row end
    ids = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12]]
    mask = [[0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1]]
    batch = collate(ids, mask, [[4], [2, 4], [2]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10], [11, 12, 0, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    assert batch.labels.tolist() == [[-100, 2, 3, 4, -100, -100], [-100, -100, -100, 8, 9, 10],
                                     [-100, 12, -100, -100, -100, -100]]
    assert (batch.tokens, batch.supervised_tokens, batch.slots) == (12, 7, 18)
    off = collate(ids, mask, [[4], [2, 4], [2]], pad_token_id=0, isolation=False)
    assert off.position_ids.tolist() == [list(range(6))] * 3
    assert off.labels.tolist() == batch.labels.tolist()  # the labels do not depend on isolation


@pytest.mark.parametrize("mode", ["padding", "packed", "concat"])
@pytest.mark.parametrize("isolation", [True, False])
def test_collate_matches_the_token_by_token_reference(mode, isolation):
    rng = np.random.default_rng(1)
    rows = pack(synthetic_samples(40, seed=3, min_length=3, max_length=30), mode, max_length=48)
    for _ in range(20):
        chosen = [rows[i] for i in rng.choice(len(rows), size=min(5, len(rows)), replace=False)]
        batch = collate([r[0] for r in chosen], [r[1] for r in chosen], [r[2] for r in chosen], PAD, isolation=isolation)
        expected = reference_collate(chosen, PAD, isolation)
        for key, value in expected.items():
            np.testing.assert_array_equal(getattr(batch, key), value, err_msg=key)
        assert batch.supervised_tokens == int((expected["labels"] != IGNORE_INDEX).sum())


def test_gather_reads_rows_across_files(tmp_path):
    folder = write_shard_set(tmp_path / "s", "concat", max_length=64, train_samples=80, max_tokens_per_file=300)
    split = ShardSet.open(folder).split("train")
    assert len(split.parts()) > 2
    # The reference reads the files with pyarrow's own row API, not through the memory-mapped views.
    import pyarrow as pa

    table = pa.concat_tables([pa.ipc.open_file(str(folder / f.name)).read_all() for f in split.files]).to_pylist()
    rows = np.array([split.num_rows - 1, 0, 3, split.num_rows // 2])
    for row, ids, mask, segments in zip(rows, *gather_rows(split, rows)):
        expected = table[int(row)]
        assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["loss_mask"]
        assert segments.tolist() == expected["segment_lengths"]


def test_row_order_is_a_seeded_permutation_per_epoch_and_resumes_without_replay():
    order = RowOrder(num_rows=10, batch_size=3, seed=7, shuffle=True)
    epochs = [np.concatenate([order.next_rows() for _ in range(3)]) for _ in range(3)]
    for rows in epochs:
        assert len(set(rows.tolist())) == 9  # 3 full batches, no row twice; one row dropped
    assert not np.array_equal(epochs[0], epochs[1])
    again = RowOrder(num_rows=10, batch_size=3, seed=7, shuffle=True)
    assert np.array_equal(np.concatenate([again.next_rows() for _ in range(3)]), epochs[0])
    # a resumed order continues from (epoch, position) alone
    order = RowOrder(10, 3, seed=7, shuffle=True)
    for _ in range(4):
        order.next_rows()
    resumed = RowOrder(10, 3, seed=7, shuffle=True, epoch=order.epoch, position=order.position)
    for _ in range(5):
        np.testing.assert_array_equal(resumed.next_rows(), order.next_rows())
    assert RowOrder(10, 5, seed=7, shuffle=False).next_rows().tolist() == [0, 1, 2, 3, 4]


def padded_slots(lengths: np.ndarray, batches: list) -> int:
    """Brute force: each batch padded to its longest row, one row at a time."""
    total = 0
    for rows in batches:
        longest = max(int(lengths[r]) for r in rows)
        total += sum(longest for _ in rows)
    return total


def test_group_by_length_draws_the_same_rows_with_less_padding_and_resumes():
    lengths = np.random.default_rng(3).integers(1, 200, size=1003)
    for epoch in range(2):
        plain = RowOrder(1003, 4, seed=7, shuffle=True, epoch=epoch)
        grouped = RowOrder(1003, 4, seed=7, shuffle=True, epoch=epoch, lengths=lengths)
        plain_batches = [plain.next_rows() for _ in range(250)]
        grouped_batches = [grouped.next_rows() for _ in range(250)]
        assert sorted(np.concatenate(grouped_batches).tolist()) == sorted(np.concatenate(plain_batches).tolist())
        assert len(set(np.concatenate(grouped_batches).tolist())) == 1000  # 250 batches, no row twice
        tokens = int(lengths[np.concatenate(plain_batches)].sum())
        plain_padding = 1 - tokens / padded_slots(lengths, plain_batches)
        grouped_padding = 1 - tokens / padded_slots(lengths, grouped_batches)
        assert plain_padding > 0.3 and grouped_padding < 0.05  # ~1/3 at random; mega-batches of 200 sorted rows
        # a mega-batch's rows stay inside it: the first 200 rows of the permutation fill 50 of the batches
        first_mega = set(epoch_permutation(1003, seed=7, epoch=epoch, shuffle=True)[:200].tolist())
        assert sum(set(b.tolist()) <= first_mega for b in grouped_batches) == 50
    order = RowOrder(1003, 4, seed=7, shuffle=True, lengths=lengths)
    for _ in range(260):  # into the second epoch
        order.next_rows()
    resumed = RowOrder(1003, 4, seed=7, shuffle=True, epoch=order.epoch, position=order.position, lengths=lengths)
    for _ in range(300):
        np.testing.assert_array_equal(resumed.next_rows(), order.next_rows())


def test_process_shares_make_up_the_global_batch():
    rows = np.arange(12) * 7
    shares = [rank_share(rows, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(shares), rows)


def test_val_batches_cover_every_row_once(tmp_path):
    split = ShardSet.open(write_shard_set(tmp_path / "s", "padding", val_samples=23)).split("val")
    for world in (1, 2, 3):
        rows = np.concatenate([b for rank in range(world) for b in val_row_batches(split, 4, rank, world)])
        assert sorted(rows.tolist()) == list(range(split.num_rows))


def test_check_shards_finds_rows_whose_segments_do_not_add_up(tmp_path):
    rows = Rows(np.arange(10), np.ones(10, np.uint8), np.array([0, 4, 10]), np.array([4, 5]), np.array([0, 1]),
                np.array([0, 1, 2]))
    folder = write_rows_set(tmp_path / "bad", "concat", 16, {"train": [rows], "val": [rows]})
    with pytest.raises(Exception, match=r"train row 1 is malformed: 6 tokens \(max_length 16\), segment lengths \[5\]; rebuild it with: python -m prep"):
        check_shards(ShardSet.open(folder), VOCAB)


def _rss_anon_bytes() -> int:
    # Anonymous memory only: pages of the memory-mapped shards count as file-backed
    # (RssFile) and the kernel can drop them; a copy of the data would be anonymous.
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _write_bulk(folder, rows: int, length: int = 512, blocks: int = 1):
    """A padding-mode shard set of rows * length random tokens, written in `blocks` writes (prep writes
    8192 rows at a time, so a real train file holds several Arrow record batches)."""
    rng = np.random.default_rng(0)
    rows_by_split = {}
    for split, count, writes in (("train", rows, blocks), ("val", 4, 1)):
        block = count // writes
        m = block * length
        rows_by_split[split] = [Rows(rng.integers(0, 50000, m), np.ones(m, np.uint8), np.arange(0, m + 1, length),
                                     np.full(block, length), np.arange(block), np.arange(block + 1))
                                for _ in range(writes)]
    return write_rows_set(folder, "padding", length, rows_by_split)


def _memory_growth_of_one_epoch(folder) -> tuple[int, int]:
    gc.collect()
    before = _rss_anon_bytes()
    shard_set = ShardSet.open(folder)
    check_shards(shard_set, VOCAB)
    split = shard_set.split("train")
    order = RowOrder(split.num_rows, 16, seed=0, shuffle=True)
    touched = 0
    for _ in range(order.batches_per_epoch):
        touched += get_rows_batch(split, order.next_rows(), PAD, True).tokens
    growth = _rss_anon_bytes() - before
    del shard_set, split
    return growth, touched


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [1, 16])
def test_resident_memory_does_not_grow_with_shard_set_size(tmp_path, blocks):
    small = _write_bulk(tmp_path / "small", rows=256, blocks=blocks)  # 128 Ki tokens
    large = _write_bulk(tmp_path / "large", rows=16384, blocks=blocks)  # 8 Mi tokens: 24 MiB of ids + masks
    _memory_growth_of_one_epoch(small)  # warm up allocator and imports
    small_growth, _ = _memory_growth_of_one_epoch(small)
    large_growth, touched = _memory_growth_of_one_epoch(large)
    assert touched == 16384 * 512  # every row was read
    assert large_growth - small_growth < 4 * 2**20, (small_growth, large_growth)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_shard_sampler_draws_what_the_trainer_draws(tmp_path, group_by_length):
    """Other trainers get `python -m train`'s batches, epoch by epoch, from ShardDataset.sampler."""
    from shards.torch_dataset import ShardDataset

    folder = write_shard_set(tmp_path / "padding", "padding", max_length=64, train_samples=43)
    dataset = ShardDataset(folder)
    sampler = dataset.sampler(4, seed=7, group_by_length=group_by_length)
    lengths = dataset.split.row_lengths()
    order = RowOrder(43, 4, seed=7, shuffle=True, lengths=lengths if group_by_length else None)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        assert list(sampler) == np.concatenate([order.next_rows() for _ in range(10)]).tolist() and len(sampler) == 40

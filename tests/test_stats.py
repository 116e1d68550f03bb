"""`python -m shards stats`: the table, the JSON keys, the plot; the statistics themselves."""
import json
import subprocess
import sys

import numpy as np
import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from shards.stats import shard_set_stats, steps_for_supervised_tokens
from tests.conftest import ROOT

KEYS = {"mode", "max_length", "samples", "dropped", "truncated", "split", "rows", "tokens", "supervised_tokens",
        "fill", "pad_fraction_at_batch", "lower_bound_rows", "samples_per_row", "sample_length", "unigram_val_loss"}


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("stats")
    from tests.conftest import SAMPLE, write_jsonl

    data = write_jsonl(base / "d.jsonl", json.loads(SAMPLE.read_text())[:150])
    for mode in ("padding", "concat"):
        run(PrepConfig(data=str(data), out=str(base / mode), mode=mode, max_length=128), progress=False)
    return base / "padding", base / "concat"


def test_json_has_every_key_and_agrees_with_the_files(two_sets):
    res = subprocess.run([sys.executable, "-m", "shards", "stats", *map(str, two_sets), "--json", "--batch-size", "8"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    padding, concat = [json.loads(line) for line in res.stdout.splitlines()]
    assert KEYS <= set(padding) and KEYS <= set(concat)
    assert padding["tokens"] == concat["tokens"] and padding["supervised_tokens"] == concat["supervised_tokens"]
    assert padding["samples_per_row"] == {"mean": 1.0, "max": 1}
    assert concat["rows"] < padding["rows"] and concat["fill"] > padding["fill"]
    assert concat["rows"] >= concat["lower_bound_rows"] == padding["lower_bound_rows"]
    assert abs(concat["fill"] - concat["tokens"] / (concat["rows"] * 128)) < 1e-12
    assert padding["pad_fraction_at_batch"] > concat["pad_fraction_at_batch"]
    # same val split; the train labels differ only where a layout cuts samples, so the baselines are close
    assert 0 < concat["unigram_val_loss"] < np.log(50259) and abs(padding["unigram_val_loss"] - concat["unigram_val_loss"]) < 0.05


def test_table_and_plot(two_sets, tmp_path):
    png = tmp_path / "h.png"
    res = subprocess.run([sys.executable, "-m", "shards", "stats", *map(str, two_sets), "--plot", str(png)],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pad_fraction_at_batch" in res.stdout and "padding" in res.stdout and "concat" in res.stdout
    (over_bound,) = [line for line in res.stdout.splitlines() if line.startswith("rows over bound")]
    assert "n/a: one sample a row" in over_bound  # padding: the whole-sample bound says nothing
    assert over_bound.rstrip().endswith("%")  # concat's figure
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_folder_is_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "shards", "stats", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0 and "no such shard set folder" in res.stderr and "Traceback" not in res.stderr


def test_stats_match_a_recount_of_the_rows(two_sets):
    from shards.format import ShardSet

    s = shard_set_stats(two_sets[1], batch_size=4)
    split = ShardSet.open(two_sets[1]).split("train")
    lengths = np.array([len(split.row(r).input_ids) for r in range(split.num_rows)])
    supervised = sum(int(split.row(r).loss_mask.sum()) for r in range(split.num_rows))
    padded = sum(max(lengths[i:i + 4]) * len(lengths[i:i + 4]) for i in range(0, len(lengths), 4))
    assert s["tokens"] == lengths.sum() and s["supervised_tokens"] == supervised
    assert s["pad_fraction_at_batch"] == pytest.approx(1 - lengths.sum() / padded)


def test_unigram_baseline_of_three_literal_rows_by_hand(tmp_path):
    from tests.train_helpers import VOCAB, to_rows, write_rows_set

    # train row 1: two samples [1 2 3] + [2 9 2]; the second sample's first token (a 2, mask 1)
    # is no label, as in the trainer's loss (nothing before it in its sample). Labels: 2 3 9 2.
    # train row 2: one sample [4 2 2]; its first token is no label. Labels: 2 2.
    train = to_rows([([1, 2, 3, 2, 9, 2], [0, 1, 1, 1, 1, 1], [3, 3], [0, 1]), ([4, 2, 2], [1, 1, 1], [3], [2])])
    val = to_rows([([5, 2, 7], [0, 1, 1], [3], [3])])  # labels: 2 7
    folder = write_rows_set(tmp_path / "s", "concat", 8, {"train": [train], "val": [val]})
    # counts on train: 2 -> 4, 3 -> 1, 9 -> 1 (6 labels); add-0.5 over the 50259-token vocabulary
    denominator = 6 + 0.5 * VOCAB
    expected = -(np.log(4.5 / denominator) + np.log(0.5 / denominator)) / 2
    assert shard_set_stats(folder)["unigram_val_loss"] == pytest.approx(expected, rel=1e-12)
    # 3 labels per train row: 12 labels at 2 rows a step are 2 steps (what `make demo` trains each layout for)
    assert steps_for_supervised_tokens(folder, 12, batch_size=2) == 2


def test_group_by_length_shows_the_padding_of_the_batches_train_draws(two_sets):
    """The two fractions, recounted batch by batch from the rows train's RowOrder draws in its first epoch."""
    from shards.format import ShardSet
    from train.data import RowOrder

    padding, concat = two_sets
    res = subprocess.run([sys.executable, "-m", "shards", "stats", str(padding), "--group-by-length", "--json",
                          "--batch-size", "8"], capture_output=True, text=True, cwd=ROOT, check=True)
    stats = json.loads(res.stdout)
    lengths = ShardSet.open(padding).split("train").row_lengths()
    for key, grouped in (("pad_fraction_shuffled", None), ("pad_fraction_grouped", lengths)):
        order = RowOrder(len(lengths), 8, seed=1337, shuffle=True, lengths=grouped)
        batches = [lengths[order.next_rows()] for _ in range(order.batches_per_epoch)]
        pads = sum(int(b.max()) - int(n) for b in batches for n in b)
        assert stats[key] == pytest.approx(pads / (pads + sum(int(b.sum()) for b in batches)), abs=1e-12)
    assert stats["pad_fraction_grouped"] < stats["pad_fraction_shuffled"] / 2
    table = subprocess.run([sys.executable, "-m", "shards", "stats", str(padding), str(concat), "--group-by-length"],
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "pad_fraction shuffled/grouped" in table
    assert "pad_fraction shuffled/grouped" not in shard_set_stats.__doc__ + subprocess.run(
        [sys.executable, "-m", "shards", "stats", str(padding)], capture_output=True, text=True, cwd=ROOT).stdout

"""`python -m shards stats`: the table, the JSON keys, the plot; the statistics themselves."""
import json
import subprocess
import sys

import numpy as np
import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from shards.stats import shard_set_stats
from tests.conftest import ROOT

KEYS = {"mode", "max_length", "samples", "dropped", "truncated", "split", "rows", "tokens", "supervised_tokens",
        "fill", "pad_fraction_at_batch", "lower_bound_rows", "samples_per_row", "sample_length"}


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

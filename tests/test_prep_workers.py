"""prep --workers N: the same shard set, byte for byte, for any N (prep/workers.py, prep/rows.py)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from shards.format import read_manifest
from tests.conftest import SAMPLE, write_jsonl

RECORDS = json.loads(SAMPLE.read_text())[:400]


def _prep(data, out, workers: int, **options):
    # 16 records a batch: 25 batches, so the workers share them unevenly
    return run(PrepConfig(data=str(data), out=str(out), workers=workers, batch_size=16, max_length=128, **options),
               progress=False)


def _same(a, b) -> None:
    assert [(f.name, f.sha256) for f in a.files] == [(f.name, f.sha256) for f in b.files]
    left, right = a.to_json(), b.to_json()
    for manifest in (left, right):
        for arg in ("workers", "out", "engine"):
            manifest["args"].pop(arg)
        manifest.pop("command")
    assert left == right


@pytest.fixture
def small_files(monkeypatch) -> list:
    """Shard files of at most 4000 tokens written in record batches of at most 40 rows (the defaults, 32M
    tokens and 8192 rows, make one file of the test data); returns the tasks the workers ran."""
    import prep.rows
    import prep.workers
    import shards.format

    monkeypatch.setattr(shards.format, "MAX_TOKENS_PER_FILE", 4000)
    monkeypatch.setattr(prep.rows, "ROWS_PER_WRITE", 40)
    tasks, real = [], prep.workers.LocalBackend.map

    def spy(self, fn, items, args_of):
        return real(self, fn, (tasks.append(fn.__name__) or item for item in items), args_of)

    monkeypatch.setattr(prep.workers.LocalBackend, "map", spy)
    return tasks


@pytest.fixture
def pools(monkeypatch) -> list:
    """The process counts of the pools prep starts."""
    import prep.workers

    started, real = [], prep.workers.ProcessPoolExecutor

    def spy(processes, **kwargs):
        started.append(processes)
        return real(processes, **kwargs)

    monkeypatch.setattr(prep.workers, "ProcessPoolExecutor", spy)
    return started


@pytest.mark.parametrize("mode", ["padding", "packed", "concat"])
def test_the_shards_are_the_same_bytes_for_any_number_of_workers(tmp_path, mode, pools, small_files):
    """Several files a split, each written whole by a worker in pass 2 (packed drops a row of prompt
    tokens only, so its files are planned after the drop)."""
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    one = _prep(data, tmp_path / "w1", 1, mode=mode)
    counts = (3,) if mode == "concat" else (2,)
    for workers in counts:
        _same(one, _prep(data, tmp_path / f"w{workers}", workers, mode=mode))
    assert pools == list(counts)  # the workers ran (after the driver's first batches)
    train_files = [f for f in one.files if f.split == "train"]
    assert len(train_files) >= 4 and small_files.count("write_file") == len(one.files)  # pass 2 on the workers
    assert small_files.count("spill_batch") == 25 - 1  # pass 1: all but the driver's first batch
    assert one.stats.rows_without_supervised_tokens_dropped == (1 if mode == "packed" else 0)


def _rows(tokens: np.ndarray, lengths: np.ndarray, first: int, stop: int):
    from shards.format import Rows

    ends = np.concatenate([[0], np.cumsum(lengths)])
    offsets = ends[first:stop + 1] - ends[first]
    piece = np.arange(stop - first + 1)
    return Rows(tokens=tokens[ends[first]:ends[stop]], loss_mask=np.ones(offsets[-1], np.uint8), row_offsets=offsets,
                segment_lengths=lengths[first:stop], segment_sources=np.arange(first, stop), segment_offsets=piece)


def test_the_file_plan_writes_the_bytes_one_writer_writes_block_by_block(tmp_path):
    """prep.rows.file_plan, each file written alone (as pass 2's tasks do), against one SplitWriter fed
    the rows block by block (the single process before --workers): the same files, byte for byte. The
    lengths give exact fits, rows that cross the bound, and blocks that end inside files."""
    from prep.rows import file_plan
    from shards.format import SplitWriter

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=300)
    lengths[:5] = 40  # the first file is exactly full
    tokens = rng.integers(0, 1000, size=int(lengths.sum())).astype(np.uint16)
    block = 16
    one = SplitWriter(tmp_path / "one", "train", np.uint16, 1000, max_tokens_per_file=200)
    (tmp_path / "one").mkdir(), (tmp_path / "plan").mkdir()
    for first in range(0, len(lengths), block):
        one.write(_rows(tokens, lengths, first, min(first + block, len(lengths))))
    sequential = one.finish()
    planned = []
    for index, batches in enumerate(file_plan(lengths, np.arange(len(lengths)) // block, 200)):
        writer = SplitWriter(tmp_path / "plan", "train", np.uint16, 1000, max_tokens_per_file=sys.maxsize,
                             first_index=index)
        for first, stop in zip(batches[:-1], batches[1:]):
            writer.write(_rows(tokens, lengths, first, stop))
        planned += writer.finish()
    assert len(sequential) >= 10 and planned == sequential


def test_skipped_records_and_the_template_tally_are_the_same_for_any_number_of_workers(tmp_path, pools):
    """Bad records in the middle (skipped and counted), replies whose reasoning the template leaves out
    (counted in the template's tally, in whichever process), and the encoder's choice made on the first
    batch: the same manifest for 1 and 2 workers."""
    records = list(RECORDS)
    records[170:170] = [{"instruction": 7}, {"messages": [{"role": "user", "content": "Hi"}]}]
    records[300:300] = [{"messages": [{"role": "user", "content": f"Hi {i}"},
                                      {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet."}]}
                        for i in range(5)]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    one = _prep(data, tmp_path / "w1", 1, skip_bad=True)
    _same(one, _prep(data, tmp_path / "w2", 2, skip_bad=True))
    assert one.stats.dropped["not_a_string"] == one.stats.dropped["no_assistant_turn"] == 1 and pools == [2]
    assert one.template.dropped_messages == {"reasoning": 5}


def test_an_error_in_the_middle_is_the_same_one_line_for_any_number_of_workers(tmp_path):
    """A record the template cannot take (tools, for GPT-2's ChatML) in batch 12 (0-based record 190): the error names it
    whichever process met it, and nothing is left behind."""
    records = list(RECORDS)
    records[190] = {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Sunny."}],
                    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}
    data = write_jsonl(tmp_path / "data.jsonl", records)
    lines = set()
    for workers in (1, 3):
        with pytest.raises(Exception) as caught:
            _prep(data, tmp_path / f"w{workers}", workers)
        lines.add(str(caught.value))
        assert not (tmp_path / f"w{workers}").exists()
    (line,) = lines
    assert line.startswith(f"{data}: record 190:") and "\n" not in line, line


def test_a_small_run_starts_no_worker(tmp_path, monkeypatch):
    """One batch after the encoder's check: no process pool at all."""
    import prep.workers

    def refuse(*args, **kwargs):
        raise AssertionError("a pool was started")

    monkeypatch.setattr(prep.workers, "ProcessPoolExecutor", refuse)
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS[:20])
    manifest = run(PrepConfig(data=str(data), out=str(tmp_path / "s"), workers=4, max_length=128), progress=False)
    assert read_manifest(tmp_path / "s").stats == manifest.stats and manifest.stats.samples == 18  # 2 in val


def test_a_killed_driver_leaves_the_old_set_whole_and_no_worker_behind(tmp_path):
    """SIGKILL of a `--workers 2` prep replacing a shard set: the old set stays as it was, and the
    workers (and multiprocessing's helper) end with their driver."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    out = tmp_path / "set"
    old = _prep(write_jsonl(tmp_path / "old.jsonl", RECORDS[:50]), out, 1)
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS * 10)
    driver = subprocess.Popen([sys.executable, "-m", "prep", "--data", str(data), "--out", str(out), "--workers", "2",
                               "--encoder", "tokenizers", "--batch-size", "20"], cwd=ROOT,
                              stderr=subprocess.DEVNULL)
    deadline, children = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(children) < 3 and driver.poll() is None:  # 2 workers, the tracker
        time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(driver.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 3 and driver.poll() is None, "the workers never started"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.2)
    assert not [c for c in children if os.path.exists(f"/proc/{c}")], "workers outlived their driver"
    assert [(f.name, f.sha256) for f in read_manifest(out).files] == [(f.name, f.sha256) for f in old.files]


def test_a_source_of_bad_records_only_is_refused_for_any_number_of_workers(tmp_path):
    """The workers check the records (the driver only reads them): a source whose records are all bad
    is still refused under --skip-bad, after the good source before it, with the same line."""
    from prep.readers import DataError

    good = write_jsonl(tmp_path / "good.jsonl", RECORDS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\nnot json\n')
    lines = set()
    for workers in (1, 2):
        with pytest.raises(DataError) as caught:
            run(PrepConfig(data=(str(good), str(bad)), out=str(tmp_path / f"w{workers}"), workers=workers,
                           batch_size=16, max_length=128, skip_bad=True), progress=False)
        lines.add(str(caught.value))
        assert caught.value.reason == "all_bad" and not (tmp_path / f"w{workers}").exists()
    (line,) = lines
    assert line.startswith(f"{bad}: all 2 records were bad (") and "malformed_json: 1" in line

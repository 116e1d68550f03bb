"""The benchmarks of prep on every core (`benchmarks.prep_scale`) and the process-tree memory sampler they use,
never their timings: the sampler sees a child's allocation, the pinned run is pinned, the figures are the rounds'
own ratios, and a prep without `--engine` gives a Ray figure that is not run, with its reason."""
from __future__ import annotations

import doctest
import json
import os
import sys

import pytest

from benchmarks import common, prep_scale


@pytest.fixture(scope="module")
def records():
    return common.sample_records(40)


def test_docstring_examples():
    assert doctest.testmod(prep_scale, optionflags=doctest.ELLIPSIS).failed == 0


ALLOCATE = "import time; block = b'x' * ({mib} * 2**20); time.sleep({hold})"


def test_tree_memory_sums_the_descendants_allocation():
    """A parent that allocates nothing runs a child that runs a grandchild holding 160 MiB for a while: the tree's
    peak sees the grandchild's allocation, the parent alone does not; resident memory holds at least the
    anonymous."""
    run = "import subprocess, sys; subprocess.run([sys.executable, '-c', {!r}], check=True)"
    parent = run.format(run.format(ALLOCATE.format(mib=160, hold=1.5)))
    tree = common.run_process([sys.executable, "-c", parent], 0.05, tree=True)
    alone = common.run_process([sys.executable, "-c", parent], 0.05)
    assert tree["peak_anon_bytes"] >= 160 * 2**20 > alone["peak_anon_bytes"] + 100 * 2**20
    assert tree["peak_rss_bytes"] >= tree["peak_anon_bytes"]
    assert common.tree_pids(os.getpid())[0] == os.getpid()


def test_run_process_pins_the_command_to_the_given_cores():
    core = max(os.sched_getaffinity(0))
    shown = common.run_process([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               cpus={core})["stdout"]
    assert json.loads(shown) == [core]


NO_ENGINE = "Usage: python -m prep [OPTIONS]\n  --workers INTEGER  processes that tokenize batches\n"


def test_ray_is_not_run_without_an_engine_option_and_says_why(monkeypatch):
    import importlib.util

    args, why = prep_scale.ray_args(NO_ENGINE)
    assert args == [] and "--engine" in why and "python -m prep --help" in why
    real = prep_scale.prep_help()  # this checkout's prep: Ray runs exactly where it has the option
    assert "--workers" in real and ("--engine" in real) == (prep_scale.ray_args(real)[1] is None) or \
        importlib.util.find_spec("ray") is None
    with_engine = NO_ENGINE + "  --engine [workers|ray]  ...\n"
    if importlib.util.find_spec("ray") is not None:
        assert prep_scale.ray_args(with_engine) == (["--engine", "ray"], None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert prep_scale.ray_args(with_engine) == ([], "ray is not installed (pip install ray)")


def test_scaling_section_pins_one_worker_and_compares_paired_rounds(tmp_path, records, monkeypatch):
    """prep --workers 1 runs pinned to one core, --workers 2 unpinned, both whole processes writing the same
    shards; the scaling is the round's own ratio; without --engine the Ray figure is not run, with its reason."""
    calls, real = [], prep_scale.run_process
    monkeypatch.setattr(prep_scale, "run_process", lambda command, *a, **k: calls.append((command, k)) or real(
        command, *a, **k))
    data = common.write_copies(tmp_path / "data.jsonl", records, 2)
    warmup = common.write_copies(tmp_path / "warmup.jsonl", records[:4], 1)
    p = prep_scale.measure_scaling(data, warmup, tmp_path, max_length=256, repeats=1, help_text=NO_ENGINE)
    cores = sorted(os.sched_getaffinity(0))
    workers = {c[c.index("--workers") + 1]: k.get("cpus") for c, k in calls}
    assert workers["1"] == {cores[0]} and workers["2"] is None and len(calls) == 2 * len(p["seconds"])
    assert p["records"] == 80 and all(p["checks"].values()) and p["checks"]
    assert p["scaling_2"]["median"] == p["seconds"]["w1"][0] / p["seconds"]["w2"][0]
    assert p["rows_per_second"]["w2"] == 80 / p["seconds"]["w2"][0] and p["ray_over_workers"] is None
    found = {f["name"]: f for f in prep_scale.scaling_figures(p)}
    assert found["prep_scaling_2"]["goal"] == {"op": ">=", "value": 1.7}
    assert f"pinned to core {cores[0]}" in found["prep_rows_per_second_w1"]["note"]
    ray = found["ray_over_workers"]
    assert ray["value"] is None and ray["passed"] is None and ray["note"].startswith("not run: ")
    assert "--engine" in ray["note"] and ray["goal"] == {"op": "<=", "value": 1.5}


def test_scaling_figures_from_literal_rounds():
    """w1 took 4, 6, 2 s and w2 2, 2, 2 s: ratios 2, 3, 1, median 2 (>= 1.7); Ray 3, 3, 3 s over w2: 1.5."""
    p = {"records": 1000, "data": "some data", "cores": 2, "pinned_core": 0, "at_cores": "w2", "repeats": 3,
         "load_average": [[0.1], [0.2]],
         "seconds": {"w1": [4.0, 6.0, 2.0], "w2": [2.0, 2.0, 2.0], "ray": [3.0, 3.0, 3.0]}, "ray_not_run": None,
         "ray_args": ["--engine", "ray"], "checks": {"w2_same_shards_as_w1": True, "ray_same_shards_as_w1": False}}
    p.update(prep_scale.rates(p["seconds"], 1000, "w2"))
    found = {f["name"]: f for f in prep_scale.scaling_figures(p)}
    assert (found["prep_scaling_2"]["value"], found["prep_scaling_2"]["passed"]) == (2.0, True)
    assert found["prep_rows_per_second_w1"]["value"] == 250 and found["prep_rows_per_second_w2"]["value"] == 500
    assert (found["ray_over_workers"]["value"], found["ray_over_workers"]["passed"]) == (1.5, True)
    assert "--engine ray --workers 2 over --workers 2" in found["ray_over_workers"]["note"]
    checks = found["same_shards_for_every_configuration"]
    assert checks["passed"] is False and "ray_same_shards_as_w1" in checks["note"]


def test_memory_run_preps_numbered_records_and_samples_the_tree(tmp_path, records):
    """2,000 numbered records (two batches: workers start) at --workers 2: every record read, the tree's peaks."""
    path = prep_scale.numbered_records(tmp_path / "data", records, 2000)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2000 == len({r["instruction"] for r in lines})
    assert lines[41] == {**records[1], "instruction": f"42. {records[1]['instruction']}"}
    assert prep_scale.numbered_records(tmp_path / "data", records, 2000).stat().st_mtime == path.stat().st_mtime
    p = prep_scale.measure_memory(records, 2000, tmp_path, max_length=256)
    assert p["checks"] == {"memory_every_record_read": True} and not (tmp_path / "shards" / "memory").exists()
    assert p["peak_rss_mib"] >= p["peak_anon_mib"] > 10 and p["workers"] == 2
    found = {f["name"]: f for f in prep_scale.memory_figures(p)}
    assert found["prep_peak_anon_mib_2m"]["goal"] == {"op": "<", "value": 1024}
    assert found["prep_peak_rss_mib_2m"]["goal"] is None and "2,000 synthetic records" in found[
        "prep_peak_anon_mib_2m"]["note"]

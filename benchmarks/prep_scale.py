"""Sections prep_scale and prep_memory: prep on every core (issue 26), each run a whole `python -m prep` process
driven by its command line, as a user runs it.

prep_scale: the benchmark data repeated 4 times, so the interpreter's start-up does not dominate. `--workers 1`
pinned to one core (its affinity, set before it starts, so tiktoken's threads cannot hide the serial part),
`--workers 2`, `--workers` = the cores if they are not 2, and `--engine ray` at `--workers` = the cores where
prep has that option, taking turns in rounds (`rounds`); a ratio is the median of the rounds' own ratios, with
their interquartile range.

prep_memory: `count` synthetic records (the sample's, each instruction numbered so that no two are the same)
prepped at `--workers 2`, with the whole process tree's anonymous and resident memory (summed over the driver
and every descendant) polled every `TREE_INTERVAL` seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

from benchmarks import report
from benchmarks.common import ROOT, load_average, median, paired_ratio, python_module, rounds, run_process

TREE_INTERVAL = 0.2  # seconds between two samples of the process tree's memory
MEMORY_WORKERS = 2
SCALING = ("w1", "w2")  # prep_scaling_2 = w2 / w1 in rows per second


def prep_help() -> str:
    """`python -m prep --help` as this checkout prints it."""
    return subprocess.run(python_module("prep", "--help"), cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def ray_args(help_text: str) -> tuple[list[str], str | None]:
    """prep's extra arguments for its Ray engine; ([], why) where this prep has no `--engine` option or Ray is
    not installed, and `ray_over_workers` is not run."""
    if "--engine" not in help_text:
        return [], "this prep has no --engine option (`python -m prep --help` does not list it)"
    if importlib.util.find_spec("ray") is None:
        return [], "ray is not installed (pip install ray)"
    return ["--engine", "ray"], None


def prep_command(data: Path, out: Path, workers: int, max_length: int, extra=()) -> list[str]:
    return python_module("prep", "--data", data, "--mode", "concat", "--max-length", max_length, "--val-ratio", 0,
                         "--out", out, "--workers", workers, *extra)


def measure_scaling(data: Path, warmup: Path, work: Path, *, max_length: int, repeats: int,
                    help_text: str | None = None, what: str = "the benchmark data x4") -> dict:
    """Seconds of each configuration over `data` (`what` it is, for the notes) in `repeats` rounds, records read
    per second, and the paired ratios; checks that every configuration wrote the same shard set (the manifests'
    fingerprints). `help_text`: prep's --help (default: this checkout's), which says whether it has --engine."""
    from shards.manifest import read_manifest

    cores = sorted(os.sched_getaffinity(0))
    ray, why = ray_args(prep_help() if help_text is None else help_text)
    at_cores = f"w{len(cores)}"
    folder = lambda name: work / "shards" / f"scale-{name}"  # noqa: E731

    def prep(name: str, workers: int, extra=(), cpus=None, source: Path = data) -> dict:
        shutil.rmtree(folder(name), ignore_errors=True)  # before the clock: prep does not clear it for a user
        return run_process(prep_command(source, folder(name), workers, max_length, extra), cpus=cpus)

    configs = {"w1": (1, [], {cores[0]}), "w2": (2, [], None)}  # name: (workers, extra arguments, pinned to)
    configs.setdefault(at_cores, (len(cores), [], None))
    if ray:
        configs["ray"] = (len(cores), ray, None)
    for name, (workers, extra, cpus) in configs.items():  # warm-up: page cache, bytecode, Ray's first start
        prep(name, workers, extra, cpus, source=warmup)
    load = [load_average()]
    done = rounds({name: lambda c=config, n=name: prep(n, *c) for name, config in configs.items()}, repeats)
    load.append(load_average())
    seconds = {name: [r["seconds"] for r in runs] for name, runs in done.items()}
    manifests = {name: read_manifest(folder(name)) for name in configs}
    records = manifests["w1"].stats.records_read
    return {"records": records, "data": what, "cores": len(cores), "pinned_core": cores[0], "at_cores": at_cores,
            "repeats": repeats, "seconds": seconds, "load_average": load, "ray_args": ray, "ray_not_run": why,
            "ray_address": os.environ.get("RAY_ADDRESS"),
            **rates(seconds, records, at_cores),
            "checks": {f"{name}_same_shards_as_w1": manifests[name].fingerprint() == manifests["w1"].fingerprint()
                       for name in configs if name != "w1"}}


def rates(seconds: dict[str, list[float]], records: int, at_cores: str) -> dict:
    """Each configuration's records read per second (over its median seconds); `prep_scaling_2`, w1's seconds
    over w2's, and `ray_over_workers`, Ray's over those of --workers at the cores (`at_cores`), round by round.

    >>> r = rates({"w1": [4.0, 6.0], "w2": [2.0, 2.0]}, 100, "w2")
    >>> r["rows_per_second"], r["scaling_2"]["median"], r["ray_over_workers"]
    ({'w1': 20.0, 'w2': 50.0}, 2.5, None)
    """
    return {"rows_per_second": {name: records / median(s) for name, s in seconds.items()},
            "scaling_2": paired_ratio(seconds["w1"], seconds["w2"]),
            "ray_over_workers": paired_ratio(seconds["ray"], seconds[at_cores]) if "ray" in seconds else None}


def numbered_records(folder: Path, records: list[dict], count: int) -> Path:
    """`count` records, the `records` over and over with each instruction numbered ("17. ...") so no two are the
    same, as a .jsonl file in `folder`; written once (its name holds the count and the records' hash)."""
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"numbered-{count}-{digest}.jsonl"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    with open(part, "w", encoding="utf-8") as f:
        for start in range(0, count, len(records)):
            f.write("".join(json.dumps({**r, "instruction": f"{i + 1}. {r['instruction']}"}, ensure_ascii=False)
                            + "\n" for i, r in zip(range(start, count), records)))
    part.rename(path)
    return path


def measure_memory(records: list[dict], count: int, work: Path, *, max_length: int,
                   workers: int = MEMORY_WORKERS) -> dict:
    """One prep of `count` numbered records at `workers`: its seconds and the process tree's peak anonymous and
    resident memory; the shard set is removed after (it is large)."""
    from shards.manifest import read_manifest

    data, out = numbered_records(work / "data", records, count), work / "shards" / "memory"
    shutil.rmtree(out, ignore_errors=True)
    load = [load_average()]
    done = run_process(prep_command(data, out, workers, max_length), TREE_INTERVAL, tree=True)
    load.append(load_average())
    stats = read_manifest(out).stats
    shutil.rmtree(out)
    return {"records": count, "workers": workers, "max_length": max_length, "seconds": done["seconds"],
            "peak_anon_mib": done["peak_anon_bytes"] / 2**20, "peak_rss_mib": done["peak_rss_bytes"] / 2**20,
            "interval": TREE_INTERVAL, "load_average": load,
            "checks": {"memory_every_record_read": stats.records_read == stats.samples == count}}


def _spread(r: dict) -> str:
    return (f"median of the {len(r['rounds'])} rounds' own ratios ({', '.join(f'{x:.3g}' for x in r['rounds'])}), "
            f"interquartile range {r['q1']:.3g}-{r['q3']:.3g}")


def scaling_figures(p: dict) -> list[dict]:
    f, n = report.figure, f"{p['records']:,}"
    load = f"load average {p['load_average'][0]} at the start, {p['load_average'][1]} at the end"
    how = {"w1": f"--workers 1 pinned to core {p['pinned_core']} (sched_setaffinity before it starts)",
           "w2": "--workers 2, not pinned"}
    seconds = {name: ", ".join(f"{s:.3g}" for s in p["seconds"][name]) for name in SCALING}
    found = [f("prep", f"prep_rows_per_second_{name}", p["rows_per_second"][name], "rows/s",
               note=f"python -m prep {how[name]} --mode concat, {p['repeats']} whole processes over {p['data']} "
                    f"({n} records): records read / the median of {seconds[name]} s")
             for name in SCALING]
    found.append(f("prep", "prep_scaling_2", p["scaling_2"]["median"], goal=(">=", 1.7),
                   note=f"w2 / w1 rows per second, {_spread(p['scaling_2'])}, on {p['cores']} cores; {load} "
                        "(the goal is for 2 idle cores)"))
    ray = p["ray_over_workers"]
    note = (f"not run: {p['ray_not_run']}" if ray is None else
            f"python -m prep {' '.join(p['ray_args'])} --workers {p['cores']} over --workers {p['cores']}, seconds, "
            f"{_spread(ray)}; " + (f"Ray joins RAY_ADDRESS={p['ray_address']}" if p.get("ray_address") else
                                   "Ray starts locally inside each process, its start-up counted"))
    found.append(f("prep", "ray_over_workers", None if ray is None else ray["median"], goal=("<=", 1.5), note=note))
    return found + [{**report.checks("prep", p["checks"]), "name": "same_shards_for_every_configuration"}]


def memory_figures(p: dict) -> list[dict]:
    f = report.figure
    what = (f"python -m prep --workers {p['workers']} --mode concat --max-length {p['max_length']} on {p['records']:,} "
            f"synthetic records (the sample's, instructions numbered), {p['seconds']:.0f} s; summed over the driver "
            f"and all its descendants (/proc/PID/status), polled every {p['interval']} s; load average "
            f"{p['load_average'][0]} at the start, {p['load_average'][1]} at the end")
    return [f("prep", "prep_peak_anon_mib_2m", p["peak_anon_mib"], "MiB", goal=("<", 1024),
              note=f"peak RssAnon of the process tree: {what}"),
            f("prep", "prep_peak_rss_mib_2m", p["peak_rss_mib"], "MiB",
              note="peak RSS of the same tree, mapped spill and shard pages included (page cache)"),
            {**report.checks("prep", p["checks"]), "name": "memory_run_read_every_record"}]

"""What every section shares: inputs, one timer (`clock` + `rounds`, paired ratios of rounds), one memory probe
(`proc_memory`, read in a process or polled from outside by `run_process`; `tree_memory` sums it over a process
and its descendants), one training set-up (`Setup`), the results record.

    python -m benchmarks.common MODULE:FUNCTION '{"keyword": ...}'   # `in_process`'s child: prints its JSON
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VERSIONED = ("torch", "transformers", "tokenizers", "pyarrow", "numpy", "datasets", "trl", "accelerate", "tiktoken")
_STATUS_KEYS = {"VmHWM": "peak_rss_bytes", "VmRSS": "rss_bytes", "RssAnon": "rss_anon_bytes"}


def sample_records(limit: int | None = None) -> list[dict]:
    """The embedded Alpaca sample's records (the first `limit`)."""
    from prep.readers import SAMPLE_PATH

    return json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))[:limit]


def write_copies(path: Path, records: list[dict], copies: int) -> Path:
    """`records` repeated `copies` times as a .jsonl file; rewritten only when its content changes."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) * copies
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def build_shards(data: Path, out: Path, mode: str, max_length: int) -> Path:
    """A shard set made by prep with its defaults, rebuilt every run."""
    from prep.config import PrepConfig
    from prep.pipeline import run

    run(PrepConfig(data=str(data), out=str(out), mode=mode, max_length=max_length), progress=False)
    return out


def median(values) -> float:
    return float(statistics.median(list(values)))


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """The median of the rounds' own ratios and their interquartile range (numpy's linear quantiles).

    >>> paired_ratio([2.0, 3.0, 6.0, 4.0], [1.0, 2.0, 2.0, 1.0])
    {'median': 2.5, 'q1': 1.875, 'q3': 3.25, 'rounds': [2.0, 1.5, 3.0, 4.0]}
    """
    ratios = [a / b for a, b in zip(numerator, denominator)]
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"median": median(ratios), "q1": float(q1), "q3": float(q3), "rounds": ratios}


def clock(function, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call.

    >>> clock(sorted, [2, 1])[1]
    [1, 2]
    """
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def rounds(tasks: dict, count: int) -> dict[str, list]:
    """Run every task `count` times, taking turns, round r starting with task r (mod their number), so
    a change in the machine's load hits every task alike.

    >>> calls = []
    >>> rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2) and calls
    ['a', 'b', 'b', 'a']
    """
    names, done = list(tasks), {name: [] for name in tasks}
    for r in range(count):
        for name in names[r % len(names):] + names[: r % len(names)]:
            done[name].append(tasks[name]())
    return done


def proc_memory(pid: int | str = "self") -> dict:
    """Peak and current resident bytes of a process, and its anonymous resident bytes (heap: what the program
    holds, without mapped files, which are page cache the kernel can drop). Linux only."""
    found = dict.fromkeys(_STATUS_KEYS.values())
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in _STATUS_KEYS:
                found[_STATUS_KEYS[key]] = int(value.split()[0]) * 1024
    except OSError:  # the process has just exited
        pass
    return found


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (children, their children...), from each process's parent in /proc/PID/stat.

    >>> tree_pids(os.getpid())[0] == os.getpid()
    True
    """
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # the fields after the name (which may hold spaces): state, then the parent's pid
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):  # it has just exited
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, index = [root], 0
    while index < len(found):
        found += parents.get(found[index], [])
        index += 1
    return found


def tree_memory(root: int) -> dict:
    """`proc_memory`'s current resident and anonymous resident bytes, summed over `root` and its descendants
    at one instant (a peak of these sums is the tree's peak; the sum of each process's peak would overstate it)."""
    sums = {"rss_bytes": 0, "rss_anon_bytes": 0}
    for pid in tree_pids(root):
        memory = proc_memory(pid)
        for key in sums:
            sums[key] += memory[key] or 0
    return sums


def run_process(command: list[str], interval: float = 0.02, *, tree: bool = False,
                cpus: set[int] | None = None) -> dict:
    """Run `command` from the repository root: its wall seconds, its peak anonymous and resident memory
    (polled every `interval` seconds; `tree`: summed over the process and its descendants, `tree_memory`),
    and its stdout. `cpus`: the only cores it may run on (its affinity, set before it starts; its children
    inherit it). A failed command raises with its last lines of stderr."""
    probe = tree_memory if tree else proc_memory
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None

    def watch(out, err) -> tuple[int, dict]:  # exit code, peak bytes
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True, preexec_fn=pin)
        peak = {"rss_anon_bytes": 0, "rss_bytes": 0}
        while process.poll() is None:
            now = probe(process.pid)
            peak = {key: max(value, now[key] or 0) for key, value in peak.items()}
            time.sleep(interval)
        return process.returncode, peak

    # Files, not pipes: a child that prints more than a pipe holds would block while we poll.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        seconds, (code, peak) = clock(watch, out, err)
        out.seek(0), err.seek(0)
        if code != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{err.read().strip()[-2000:]}")
        return {"seconds": seconds, "peak_anon_bytes": peak["rss_anon_bytes"], "peak_rss_bytes": peak["rss_bytes"],
                "stdout": out.read()}


def python_module(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def in_process(function, **kwargs) -> dict:
    """`function(**kwargs)` in a fresh interpreter: `run_process`'s figures, and what it returned as `result`."""
    done = run_process(python_module(__name__, f"{function.__module__}:{function.__name__}",
                                     json.dumps(kwargs, default=str)))
    return {**done, "result": json.loads(done["stdout"])}


class Setup:
    """Open shards -> row order -> `batch()`; with `with_model`, the run `python -m train` builds (`train.setup.build`:
    tokenizer, model, optimizer, schedule, in fp32 on the CPU) -> `step()`, the loop's own backward and update."""

    def __init__(self, shards: Path, batch_size: int = 16, seed: int = 0, attention: str = "sdpa",
                 flatten: bool = False):
        import torch

        from shards.format import ShardSet
        from train.attention import resolve_attention
        from train.config import TrainConfig
        from train.data import RowOrder

        # warm-up 0: the peak learning rate from the first step, as a benchmark's few steps need
        self.config = TrainConfig(shards=Path(shards), out=Path(tempfile.gettempdir()) / "sftpack-benchmark-run",
                                  batch_size=batch_size, seed=seed, attention=attention, flatten=flatten,
                                  warmup_steps=0, precision="fp32")
        self.shard_set = ShardSet.open(shards)
        self.split = self.shard_set.split("train")
        self.order = RowOrder(self.split.num_rows, batch_size, seed=seed, shuffle=True)
        self.attention = resolve_attention(attention, torch.device("cpu"), flatten=flatten)

    def with_model(self, model: str = "tiny", label_head: bool = True) -> "Setup":
        """`label_head` False: the reference path, full B x L x V logits and their cross-entropy."""
        import torch

        from train.head import LabelLossModel, token_losses
        from train.setup import build
        from train.step import Dist

        class FullHeadLoss(LabelLossModel):
            def forward(self, input_ids, position_ids, labels, **extra):
                extra = {k: v for k, v in extra.items() if v is not None}
                logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra).logits
                return token_losses(logits, labels).sum()

        self.run = build(dataclasses.replace(self.config, model=model), Dist(), device=torch.device("cpu"))
        if not label_head:
            self.run.loss_model = self.run.ddp = FullHeadLoss(self.run.model)
        self.run.loss_model.train()
        self.model, self.optimizer = self.run.model, self.run.optimizer
        return self

    def batch(self, rows=None):
        """(model inputs, the collated Batch) of these rows, or of the next ones in order."""
        import torch

        from train.step import get_batch

        rows = self.order.next_rows() if rows is None else rows
        return get_batch(self.split, rows, self.shard_set.manifest.pad_token_id, isolation=True,
                         device=torch.device("cpu"), flatten=self.config.flatten, attention=self.attention)

    def step(self, drawn) -> float:
        """One optimizer step of the loop (`Run.step`) on a `batch()`; returns the mean loss per supervised token."""
        inputs, batch = drawn
        loss = self.run.step([(inputs, batch)], batch.supervised_tokens)[0]
        return loss.item() / max(batch.supervised_tokens, 1)


def new_results(*configs) -> dict:
    """The head of a results JSON: when, where, with what, under which settings (each dataclass's fields)."""
    settings = {k: str(v) if isinstance(v, Path) else v for c in configs for k, v in dataclasses.asdict(c).items()}
    return {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "load_average": {"start": load_average()},
            "settings": settings, "sections": {}, "figures": [], "skipped": {}, "clock": time.perf_counter()}


def write_results(results: dict, out: Path) -> dict:
    """Close `new_results`' record (end time, seconds, load) and write it to `out`."""
    results.update(finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   seconds=time.perf_counter() - results.pop("clock"))
    results["load_average"]["end"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)) + "\n")
    return results


def versions() -> dict:
    """Installed versions of the libraries the figures depend on (None: not installed)."""
    return {name: importlib.util.find_spec(name) and importlib.metadata.version(name) for name in VERSIONED}


def machine() -> dict:
    import torch

    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return {"platform": platform.platform(), "processor": cpu[0] if cpu else platform.processor(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":  # in_process's child
    module, name = sys.argv[1].split(":")
    print(json.dumps(getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))))

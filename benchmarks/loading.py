"""Section 3, loading: one collated batch from the memory-mapped shards against one training step,
and the resident memory of a process that reads a whole epoch.

The batch is what `train.loop.get_batch` returns (padded ids, labels from the loss masks,
per-segment position ids, as tensors); the step is `benchmarks.common.train_step` on the `tiny`
model, fp32 on CPU, like `python -m train --model tiny` there.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import clock, median, optimizer_for, train_step


def open_train_split(shards: Path):
    from shards.format import ShardSet

    shard_set = ShardSet.open(shards)
    return shard_set, shard_set.split("train")


def batch_seconds(shards: Path, batch_size: int, count: int = 50, warmup: int = 5, seed: int = 0) -> dict:
    """Median seconds of `get_batch` over `count` successive shuffled batches, after `warmup` ones."""
    import torch

    from train.data import RowOrder
    from train.loop import get_batch

    shard_set, split = open_train_split(shards)
    order = RowOrder(split.num_rows, batch_size, seed=seed, shuffle=True)
    pad, cpu = shard_set.manifest.pad_token_id, torch.device("cpu")
    times, shapes = [], set()
    for i in range(warmup + count):
        seconds, (inputs, batch) = clock(get_batch, split, order.next_rows(), pad, True, cpu)
        if i >= warmup:
            times.append(seconds)
            shapes.add(tuple(batch.input_ids.shape))
    return {"seconds": median(times), "batches": count, "widths": sorted({w for _, w in shapes})}


def step_seconds(shards: Path, batch_size: int, repeats: int, seed: int = 0, model_name: str = "tiny") -> dict:
    """Median seconds of one training step on batches of these shards, after one warm-up step."""
    import torch
    from transformers import AutoTokenizer

    from train.data import RowOrder
    from train.loop import get_batch
    from train.model import load_model

    shard_set, split = open_train_split(shards)
    tok = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
    model = load_model(model_name, tok, seed=seed)
    model.train()
    optimizer = optimizer_for(model)
    order = RowOrder(split.num_rows, batch_size, seed=seed, shuffle=True)
    pad, cpu = shard_set.manifest.pad_token_id, torch.device("cpu")
    times, losses = [], []
    for i in range(1 + repeats):
        inputs, batch = get_batch(split, order.next_rows(), pad, True, cpu)
        seconds, loss = clock(train_step, model, optimizer, inputs, batch.supervised_tokens)
        losses.append(loss / max(batch.supervised_tokens, 1))
        if i:
            times.append(seconds)
    return {"seconds": median(times), "repeats": repeats, "model": model_name, "loss_per_token": losses}


def rss_of_epoch(shards: Path, batch_size: int) -> dict:
    """Run `benchmarks.rss_probe` in a fresh process over one epoch of the shards; its memory figures."""
    command = [sys.executable, "-m", "benchmarks.rss_probe", str(shards), "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_growth(small: Path, large: Path, batch_size: int, repeats: int) -> dict:
    """Peak resident memory iterating `large` over iterating `small`, alternating fresh processes."""
    runs = {"small": [], "large": []}
    for _ in range(repeats):
        runs["small"].append(rss_of_epoch(small, batch_size))
        runs["large"].append(rss_of_epoch(large, batch_size))

    def med(which: str, key: str) -> float:
        return median(r[key] for r in runs[which])

    return {
        "small": {"shards": str(small), "rows": runs["small"][0]["rows"], "shard_bytes": runs["small"][0]["shard_bytes"],
                  "peak_rss_bytes": med("small", "peak_rss_bytes"), "rss_anon_bytes": med("small", "rss_anon_bytes"),
                  "rss_file_bytes": med("small", "rss_file_bytes")},
        "large": {"shards": str(large), "rows": runs["large"][0]["rows"], "shard_bytes": runs["large"][0]["shard_bytes"],
                  "peak_rss_bytes": med("large", "peak_rss_bytes"), "rss_anon_bytes": med("large", "rss_anon_bytes"),
                  "rss_file_bytes": med("large", "rss_file_bytes")},
        "rss_growth": med("large", "peak_rss_bytes") / med("small", "peak_rss_bytes"),
        # Anonymous memory only: what the process allocated, without the mapped shard pages.
        "anon_rss_growth": (med("large", "rss_anon_bytes") / med("small", "rss_anon_bytes")
                            if med("small", "rss_anon_bytes") else None),
        "repeats": repeats,
    }


def measure(shards_by_length: dict[int, Path], rss_small: Path, rss_large: Path, batch_size: int = 16,
            repeats: int = 3) -> dict:
    """Batch time and step time per max_length, and the memory growth of a 10x larger epoch."""
    result: dict = {"batch_size": batch_size, "by_max_length": {}}
    for max_length, shards in shards_by_length.items():
        batch = batch_seconds(shards, batch_size)
        step = step_seconds(shards, batch_size, repeats)
        result["by_max_length"][max_length] = {
            "shards": str(shards), "batch_seconds": batch["seconds"], "batch_widths": batch["widths"],
            "step_seconds": step["seconds"], "load_over_step": batch["seconds"] / step["seconds"],
            "model": step["model"],
        }
    result["memory"] = rss_growth(rss_small, rss_large, batch_size, repeats)
    return result

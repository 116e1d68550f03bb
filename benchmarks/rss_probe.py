"""Iterate one full epoch of a shard set as the trainer does, then print this process's memory.

    python -m benchmarks.rss_probe benchmarks/work/shards/rss-x10 --batch-size 16
    {"rows": 6350, "batches": 396, "tokens": ..., "peak_rss_bytes": ..., "rss_anon_bytes": ..., ...}

Run in a fresh process by `benchmarks.loading.rss_growth`, so that nothing else the benchmark
did counts. The peak includes the imports (torch, transformers) a training process has too.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import click


def memory() -> dict:
    """Peak and current resident memory, split into anonymous and file-backed (mapped) pages."""
    fields = {"VmHWM": "peak_rss_bytes", "VmRSS": "rss_bytes", "RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes"}
    found = dict.fromkeys(fields.values(), None)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in fields:
                found[fields[key]] = int(value.split()[0]) * 1024
    if found["peak_rss_bytes"] is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        found["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return found


@click.command()
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", default=16, show_default=True, help="rows per batch")
def main(shards: Path, batch_size: int) -> None:
    import torch

    from shards.format import ShardSet
    from train.data import RowOrder
    from train.loop import get_batch

    shard_set = ShardSet.open(shards)
    split = shard_set.split("train")
    order = RowOrder(split.num_rows, batch_size, seed=0, shuffle=True)
    pad, cpu = shard_set.manifest.pad_token_id, torch.device("cpu")
    tokens = 0
    for _ in range(order.batches_per_epoch):
        inputs, batch = get_batch(split, order.next_rows(), pad, True, cpu)
        tokens += batch.tokens
    shard_bytes = sum(entry.bytes for entry in shard_set.manifest.files)
    print(json.dumps({"rows": split.num_rows, "batches": order.batches_per_epoch, "tokens": tokens,
                      "shard_bytes": shard_bytes, **memory()}))


if __name__ == "__main__":
    main()

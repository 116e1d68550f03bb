"""Section loading: the time to collate one batch from the memory-mapped shards, and the peak heap of a
process reading a whole epoch of a shard set of about 1 GB against one of about 100 MB (mapped shard
pages are page cache the kernel drops at will, so the heap is the figure, not the resident set).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.common import Setup, clock, in_process, median, rounds
from shards.format import TOKENIZER_DIR, Rows, ShardSet, SplitWriter
from shards.manifest import write_manifest


def batch_seconds(shards: Path, batch_size: int, count: int = 50, warmup: int = 5) -> float:
    """Median seconds of `train.step.get_batch` over successive shuffled batches, after a warm-up."""
    setup = Setup(shards, batch_size)
    return median([clock(setup.batch)[0] for _ in range(warmup + count)][warmup:])


def tile(source: Path, out: Path, min_bytes: int) -> Path:
    """A shard set whose train split repeats `source`'s train rows until its files hold `min_bytes`,
    written by the shard format's own writer one record batch at a time, as prep writes."""
    shard_set = ShardSet.open(source)
    manifest = shard_set.manifest
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    writer = SplitWriter(out, "train", np.dtype(manifest.token_dtype), manifest.vocab_size)
    parts = [Rows(*(p[k] for k in ("input_ids", "loss_mask", "row_offsets", "segment_lengths", "segment_sources",
                                   "segment_offsets"))) for p in shard_set.split("train").parts()]
    for _ in range(-(-min_bytes // sum(e.bytes for e in manifest.split_files("train")))):
        for part in parts:
            writer.write(part)
    for entry in manifest.split_files("val"):
        shutil.copyfile(source / entry.name, out / entry.name)
    shutil.copytree(source / TOKENIZER_DIR, out / TOKENIZER_DIR)
    write_manifest(out, dataclasses.replace(manifest, files=writer.finish() + manifest.split_files("val"),
                                            command=f"benchmarks.loading.tile({source})"))
    return out


def read_epoch(shards: str, batch_size: int) -> dict:
    """Run by `epoch_memory` in its own process: read one epoch of `shards` as the trainer does."""
    setup = Setup(Path(shards), batch_size)
    tokens = sum(setup.batch()[1].tokens for _ in range(setup.order.batches_per_epoch))
    return {"rows": setup.split.num_rows, "tokens": tokens,
            "shard_bytes": sum(e.bytes for e in setup.shard_set.manifest.files)}


def epoch_memory(small: Path, large: Path, batch_size: int, repeats: int) -> dict:
    """Peak memory of a process reading one epoch of `small`, and of `large`, in alternating fresh processes."""
    runs = rounds({name: lambda s=shards: in_process(read_epoch, shards=s, batch_size=batch_size)
                   for name, shards in (("small", small), ("large", large))}, repeats)
    result = {name: {**rs[0]["result"], "peak_anon_mib": median(r["peak_anon_bytes"] for r in rs) / 2**20}
              for name, rs in runs.items()}
    return {**result, "rss_anon_growth_mib": result["large"]["peak_anon_mib"] - result["small"]["peak_anon_mib"]}


def measure(concat: dict[int, Path], work: Path, batch_size: int, shard_mb: tuple[int, int], repeats: int) -> dict:
    """One batch's collation time from each concat set (by max-length); the epoch memory of the 256 set
    tiled to `shard_mb` MB."""
    small, large = (tile(concat[256], work / f"tiled-{mb}mb", mb * 10**6) for mb in shard_mb)
    return {"batch_size": batch_size, "memory": epoch_memory(small, large, batch_size, repeats),
            "batch_seconds": {length: batch_seconds(path, batch_size) for length, path in concat.items()}}


def figures(loading: dict) -> list[dict]:
    f, memory = report.figure, loading["memory"]
    found = [f("loading", f"batch_ms_{length}", s * 1000, "ms", note=f"one batch of {loading['batch_size']} rows, CPU")
             for length, s in loading["batch_seconds"].items()]
    found += [f("loading", f"epoch_peak_anon_mib_{memory[name]['shard_bytes'] / 2**20:.0f}mib_shards",
                memory[name]["peak_anon_mib"], "MiB") for name in ("small", "large")]
    return found + [f("loading", "rss_anon_growth_mib", memory["rss_anon_growth_mib"], "MiB", goal=("<", 64),
                      note="peak heap reading a whole epoch of the large set minus of the small one")]

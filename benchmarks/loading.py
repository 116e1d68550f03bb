"""Section loading: the time to collate one batch from the memory-mapped shards, and the memory
of a process that reads a whole epoch of a shard set of about 1 GB against one of about 100 MB.

The large sets repeat the rows of a prep-made set (`tile`), written with `shards.format`'s own
writer, so the reader meets real files of that size. The figure is the growth of the reader's
peak anonymous memory (what it allocates), not of its resident set: mapped shard pages are page
cache the kernel drops at will. The probe is this module run as a process:

    python -m benchmarks.loading SHARDS --batch-size 16    # one epoch; prints rows and batches
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click
import numpy as np

from benchmarks import report
from benchmarks.common import Setup, clock, median, python_module, remove, run_process


def batch_seconds(shards: Path, batch_size: int, count: int = 50, warmup: int = 5) -> float:
    """Median seconds of `train.loop.get_batch` over successive shuffled batches, after a warm-up."""
    setup = Setup(shards, batch_size)
    times = [clock(setup.batch)[0] for _ in range(warmup + count)]
    return median(times[warmup:])


def repeat_rows(rows, copies: int):
    """`rows` (shards.format.Rows) written out `copies` times one after the other."""
    from shards.format import Rows

    def tiled_offsets(offsets: np.ndarray) -> np.ndarray:
        offsets = offsets.astype(np.int64) - offsets[0]
        steps = np.arange(copies, dtype=np.int64)[:, None] * offsets[-1]
        return np.concatenate([(offsets[:-1] + steps).ravel(), [offsets[-1] * copies]])

    t0, t1 = rows.row_offsets[0], rows.row_offsets[-1]
    s0, s1 = rows.segment_offsets[0], rows.segment_offsets[-1]
    return Rows(np.tile(rows.tokens[t0:t1], copies), np.tile(rows.loss_mask[t0:t1], copies),
                tiled_offsets(rows.row_offsets), np.tile(rows.segment_lengths[s0:s1], copies),
                np.tile(rows.segment_sources[s0:s1], copies), tiled_offsets(rows.segment_offsets))


def tile(source: Path, out: Path, min_bytes: int) -> Path:
    """A shard set whose train split repeats `source`'s train rows until its files hold `min_bytes`."""
    from shards.format import TOKENIZER_DIR, Rows, ShardSet, SplitWriter
    from shards.manifest import write_manifest

    shard_set = ShardSet.open(source)
    manifest = shard_set.manifest
    remove(out)
    out.mkdir(parents=True)
    writer = SplitWriter(out, "train", np.dtype(manifest.token_dtype), manifest.vocab_size)
    train_bytes = sum(e.bytes for e in manifest.split_files("train"))
    copies = -(-min_bytes // train_bytes)
    parts = [Rows(p["input_ids"], p["loss_mask"], p["row_offsets"], p["segment_lengths"], p["segment_sources"],
                  p["segment_offsets"]) for p in shard_set.split("train").parts()]
    per_write = max(1, (1 << 24) // max(1, sum(len(p.tokens) for p in parts)))  # ~16 Mi tokens per write
    for start in range(0, copies, per_write):
        for part in parts:
            writer.write(repeat_rows(part, min(per_write, copies - start)))
    val = manifest.split_files("val")
    for entry in val:
        shutil.copyfile(source / entry.name, out / entry.name)
    shutil.copytree(source / TOKENIZER_DIR, out / TOKENIZER_DIR)
    write_manifest(out, dataclasses.replace(manifest, files=writer.finish() + val,
                                            command=f"benchmarks.loading.tile({source})"))
    return out


def epoch_memory(small: Path, large: Path, batch_size: int, repeats: int) -> dict:
    """Peak memory of a process reading one epoch of `small`, and of `large`, in alternating fresh processes."""
    runs: dict[str, list] = {"small": [], "large": []}
    for _ in range(repeats):
        for name, shards in (("small", small), ("large", large)):
            done = run_process(python_module("benchmarks.loading", shards, "--batch-size", batch_size))
            runs[name].append({**done, **json.loads(done["stdout"])})
    result = {name: {"shard_bytes": rs[0]["shard_bytes"], "rows": rs[0]["rows"],
                     "peak_anon_mib": median(r["peak_anon_bytes"] for r in rs) / 2**20,
                     "peak_rss_mib": median(r["peak_rss_bytes"] for r in rs) / 2**20} for name, rs in runs.items()}
    result["rss_anon_growth_mib"] = result["large"]["peak_anon_mib"] - result["small"]["peak_anon_mib"]
    return result


def measure(by_length: dict[int, Path], small: Path, large: Path, batch_size: int, repeats: int) -> dict:
    return {"batch_size": batch_size, "batch_seconds": {L: batch_seconds(s, batch_size) for L, s in by_length.items()},
            "memory": epoch_memory(small, large, batch_size, repeats)}


def figures(loading: dict) -> list[dict]:
    f, memory = report.figure, loading["memory"]
    found = [f("loading", f"batch_ms_{L}", s * 1000, "ms", note=f"one batch of {loading['batch_size']} rows, CPU")
             for L, s in loading["batch_seconds"].items()]
    for name in ("small", "large"):
        found.append(f("loading", f"epoch_peak_anon_mib_{memory[name]['shard_bytes'] / 2**20:.0f}mib_shards",
                       memory[name]["peak_anon_mib"], "MiB"))
    found.append(f("loading", "rss_anon_growth_mib", memory["rss_anon_growth_mib"], "MiB", goal=("<", 64),
                   note="peak heap reading a whole epoch of the large set minus of the small one"))
    return found


@click.command()
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", default=16, show_default=True, help="rows per batch")
def main(shards: Path, batch_size: int) -> None:
    """Read one epoch of SHARDS as the trainer does; print what was read (memory is polled from outside)."""
    setup = Setup(shards, batch_size)
    tokens = sum(setup.batch()[1].tokens for _ in range(setup.order.batches_per_epoch))
    print(json.dumps({"rows": setup.split.num_rows, "tokens": tokens,
                      "shard_bytes": sum(e.bytes for e in setup.shard_set.manifest.files)}))


if __name__ == "__main__":
    main()

"""Rows and packing time of each layout, on real sample lengths or synthetic ones.

    python benchmarks/bench_packing.py [lengths.npy]

Without a path it draws 52k lognormal lengths (a stand-in for chat SFT data). At each
max_length every layout gets the lengths truncated to max_length, as the pipeline
does. The large run draws `synthetic_count` lengths from the given ones (bfd only); its
time is the median of `synthetic_repeats` runs after the one that counts its rows.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Run as a script, the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prep.packing import lower_bound_rows, pack_concat, pack_packed, pack_padding  # noqa: E402

MAX_LENGTHS = (256, 1024)


def seconds(repeats: int, function, *args, **kwargs) -> float:
    """Median wall time of `repeats` calls of function(*args, **kwargs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(lengths: np.ndarray, max_lengths=MAX_LENGTHS, repeats: int = 5, synthetic_count: int = 10_000_000,
        seed: int = 0, synthetic_repeats: int = 1) -> dict:
    """{max_length: rows per layout, the concat bound and gap, packing seconds}."""
    lengths = np.asarray(lengths, dtype=np.int64)
    results = {}
    for max_length in max_lengths:
        truncated = np.minimum(lengths, max_length)
        bound = lower_bound_rows(truncated, max_length)
        bfd_rows = pack_concat(truncated, max_length).num_rows
        seed_rows = pack_concat(truncated, max_length, packer="seed").num_rows
        many = np.minimum(np.random.default_rng(seed).choice(lengths, synthetic_count), max_length)
        many_rows = pack_concat(many, max_length).num_rows  # also the warm-up of the timing below
        many_seconds = seconds(synthetic_repeats, pack_concat, many, max_length)
        results[max_length] = {
            "samples": len(lengths),
            "concat_bfd_rows": bfd_rows,
            "concat_seed_rows": seed_rows,
            "packed_rows": pack_packed(truncated, max_length).num_rows,
            "padding_rows": pack_padding(truncated, max_length).num_rows,
            "lower_bound_rows": bound,
            "concat_rows_over_bound": bfd_rows / bound - 1,
            "concat_seed_rows_over_bound": seed_rows / bound - 1,
            "concat_bfd_seconds": seconds(repeats, pack_concat, truncated, max_length),
            "concat_seed_seconds": seconds(repeats, pack_concat, truncated, max_length, packer="seed"),
            "synthetic_samples": synthetic_count,
            "synthetic_concat_bfd_seconds": many_seconds,
            "synthetic_concat_rows_over_bound": many_rows / lower_bound_rows(many, max_length) - 1,
        }
    return results


def synthetic_lengths(count: int = 52_000, seed: int = 0) -> np.ndarray:
    # Median ~150 tokens with a long right tail, like instruction-tuning chats.
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.0, sigma=0.8, size=count), 16, 4096).astype(np.int64)


def main(argv: list[str]) -> None:
    lengths = np.load(argv[0]) if argv else synthetic_lengths()
    results = run(lengths)
    names = list(next(iter(results.values())))
    print(f"{'':34}" + "".join(f"{f'max_length {m}':>18}" for m in results))
    for name in names:
        cells = (f"{r[name]:>18.4f}" if isinstance(r[name], float) else f"{r[name]:>18}" for r in results.values())
        print(f"{name:34}" + "".join(cells))
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])

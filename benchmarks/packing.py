"""Section packing: rows of each layout against the Martello–Toth bound, and packing time.

Every layout gets the real sample lengths truncated to max_length, as prep does; the
large run packs `synthetic_count` lengths drawn from the real ones (bfd only).
"""
from __future__ import annotations

import numpy as np

from benchmarks import report
from benchmarks.common import clock, median
from prep.packing import lower_bound_rows, pack_concat, pack_packed, pack_padding

MAX_LENGTHS = (256, 1024)


def run(lengths: np.ndarray, max_lengths=MAX_LENGTHS, repeats: int = 5, synthetic_count: int = 10_000_000,
        seed: int = 0) -> dict:
    """{max_length: rows per layout, the bound and the gap to it, packing seconds}."""
    lengths = np.asarray(lengths, dtype=np.int64)
    results = {}
    for max_length in max_lengths:
        truncated = np.minimum(lengths, max_length)
        bound = lower_bound_rows(truncated, max_length)
        bfd_rows = pack_concat(truncated, max_length).num_rows
        greedy_rows = pack_concat(truncated, max_length, packer="greedy").num_rows
        many = np.minimum(np.random.default_rng(seed).choice(lengths, synthetic_count), max_length)
        pack_concat(many, max_length)  # warm-up
        results[max_length] = {
            "samples": len(lengths), "concat_bfd_rows": bfd_rows, "concat_greedy_rows": greedy_rows,
            "packed_rows": pack_packed(truncated, max_length).num_rows,
            "padding_rows": pack_padding(truncated, max_length).num_rows, "lower_bound_rows": bound,
            "concat_rows_over_bound": bfd_rows / bound - 1, "concat_greedy_rows_over_bound": greedy_rows / bound - 1,
            "concat_bfd_seconds": median(clock(pack_concat, truncated, max_length)[0] for _ in range(repeats)),
            "synthetic_samples": synthetic_count,
            "synthetic_concat_bfd_seconds": median(clock(pack_concat, many, max_length)[0]
                                                   for _ in range(max(1, repeats // 2))),
        }
    return results


def figures(packing: dict) -> list[dict]:
    f, found = report.figure, []
    for max_length, r in packing.items():
        found += [
            f("packing", f"concat_rows_over_bound_{max_length}", r["concat_rows_over_bound"], goal=("<", 0.005)),
            f("packing", f"concat_seconds_{max_length}", r["concat_bfd_seconds"], "s", goal=("<", 0.1),
              note=f"bfd over the {r['samples']:,} real lengths"),
            f("packing", f"synthetic_concat_seconds_{max_length}", r["synthetic_concat_bfd_seconds"], "s",
              goal=("<", 10), note=f"bfd over {r['synthetic_samples']:,} lengths drawn from them"),
        ]
    return found

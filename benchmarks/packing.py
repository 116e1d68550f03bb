"""Section packing: rows of each layout against the Martello–Toth bound, and packing time.

Every layout gets the real sample lengths truncated to max_length, as prep does; the
large run packs `synthetic_count` lengths drawn from the real ones (bfd only), and at prep's
default max_length times prep's whole global plan for them (`plan`: its default concat packer,
then its row shuffle).
"""
from __future__ import annotations

import numpy as np

from benchmarks import report
from benchmarks.common import clock, median
from prep.config import PrepConfig
from prep.packing import Layout, lower_bound_rows, pack_concat, pack_packed, pack_padding, shuffle_rows

MAX_LENGTHS = (256, 1024)


def plan(lengths: np.ndarray, max_length: int, config: PrepConfig = PrepConfig()) -> Layout:
    """prep's global plan of concat rows: `config`'s packer, then the rows shuffled with its seed."""
    return shuffle_rows(pack_concat(lengths, max_length, packer=config.packer), config.seed)


def plan_seconds(lengths: np.ndarray, max_length: int, repeats: int, config: PrepConfig = PrepConfig()) -> dict:
    """Seconds of `plan`, the median of `repeats` runs, and of its shuffle alone (in the same runs)."""
    packs, shuffles = [], []
    for _ in range(repeats):
        seconds, layout = clock(pack_concat, lengths, max_length, packer=config.packer)
        packs.append(seconds)
        shuffles.append(clock(shuffle_rows, layout, config.seed)[0])
    return {"plan_seconds": median(a + b for a, b in zip(packs, shuffles)), "plan_shuffle_seconds": median(shuffles),
            "plan_repeats": repeats, "plan_packer": config.packer}


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
        if max_length == PrepConfig().max_length:
            results[max_length].update(plan_seconds(many, max_length, repeats // 2 + 1))  # 3 of the default 5
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
        if "plan_seconds" in r:
            found.append(f("packing", "pack_plan_seconds_10m", r["plan_seconds"], "s", goal=("<", 5),
                           note=f"prep's global plan (concat, its default packer {r['plan_packer']}, then the row "
                                f"shuffle) for {r['synthetic_samples']:,} lengths drawn from the real ones, truncated "
                                f"to {max_length}; median of {r['plan_repeats']}, the shuffle's median "
                                f"{r['plan_shuffle_seconds']:.3g} s"))
    return found

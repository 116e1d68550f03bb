"""What is in a shard set: row and sample statistics, a side-by-side table, histograms.

Row statistics are recomputed from the memory-mapped files (so they describe what
is really there); sample-level facts that only prep saw (dropped records, truncations,
the packing lower bound) come from the manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sftcli import markdown_table
from shards.format import ShardSet, per_row_sum

PERCENTILES = (50, 90, 99)


def pad_fraction_at_batch(row_lengths: np.ndarray, batch_size: int) -> float:
    """Fraction of pad tokens a collator adds padding each batch (rows in order) to its longest row.

    >>> pad_fraction_at_batch(np.array([4, 2, 4, 4]), 2)
    0.125
    """
    if len(row_lengths) == 0:
        return 0.0
    starts = np.arange(0, len(row_lengths), batch_size)
    longest = np.maximum.reduceat(row_lengths, starts)
    sizes = np.diff(np.append(starts, len(row_lengths)))
    padded = int((longest * sizes).sum())
    return float(1 - row_lengths.sum() / padded)


def row_stats(row_lengths: np.ndarray, row_supervised: np.ndarray, segments_per_row: np.ndarray,
              max_length: int, batch_size: int) -> dict:
    """Statistics of one split's rows.

    >>> s = row_stats(np.array([4, 2]), np.array([2, 1]), np.array([2, 1]), 4, 16)
    >>> s["rows"], s["tokens"], s["fill"], s["pad_fraction_at_batch"], s["samples_per_row"]
    (2, 6, 0.75, 0.25, {'mean': 1.5, 'max': 2})
    """
    rows = int(len(row_lengths))
    return {
        "rows": rows,
        "tokens": int(row_lengths.sum()),
        "supervised_tokens": int(row_supervised.sum()),
        "fill": float(row_lengths.sum() / (rows * max_length)) if rows else 0.0,
        "pad_fraction_at_batch": pad_fraction_at_batch(row_lengths, batch_size),
        "batch_size": batch_size,
        "samples_per_row": {
            "mean": float(segments_per_row.mean()) if rows else 0.0,
            "max": int(segments_per_row.max()) if rows else 0,
        },
    }


def sample_stats(lengths: np.ndarray) -> dict:
    """Length distribution of the samples written (after truncation).

    >>> sample_stats(np.array([1, 2, 3, 10]))["max"]
    10
    """
    if len(lengths) == 0:
        return {}
    summary = {f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES}
    summary.update(mean=float(lengths.mean()), max=int(lengths.max()), min=int(lengths.min()))
    return summary


def _split_arrays(split) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row lengths, supervised counts, segments per row, and per-source sample lengths."""
    lengths, supervised, segments, by_source = [], [], [], []
    for part in split.parts():
        offsets = part["row_offsets"].astype(np.int64)
        lengths.append(np.diff(offsets))
        supervised.append(per_row_sum(part["loss_mask"], offsets))
        segments.append(np.diff(part["segment_offsets"].astype(np.int64)))
        seg_lo, seg_hi = part["segment_offsets"][0], part["segment_offsets"][-1]
        by_source.append((part["segment_sources"][seg_lo:seg_hi], part["segment_lengths"][seg_lo:seg_hi]))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    sources = cat([s for s, _ in by_source]).astype(np.int64)
    piece_lengths = cat([l for _, l in by_source]).astype(np.int64)
    # packed rows split samples: add the pieces of each source record back together
    sample_lengths = np.bincount(sources, weights=piece_lengths) if len(sources) else np.zeros(0)
    sample_lengths = sample_lengths[np.bincount(sources) > 0] if len(sources) else sample_lengths
    return cat(lengths), cat(supervised), cat(segments), sample_lengths.astype(np.int64)


def shard_set_stats(folder: Path, batch_size: int = 16) -> dict:
    """Everything `python -m shards stats` reports for one shard set."""
    shard_set = ShardSet.open(folder)
    manifest, saved = shard_set.manifest, shard_set.manifest.stats
    row_lengths, supervised, segments, _ = _split_arrays(shard_set.split("train"))
    result = {
        "path": str(folder), "mode": manifest.mode, "max_length": manifest.max_length, "packer": manifest.packer,
        "loss_on": manifest.loss_on, "samples": saved.samples, "dropped": saved.dropped, "truncated": saved.truncated,
        "split": saved.split, "lower_bound_rows": saved.lower_bound_rows, "sample_length": saved.sample_length,
    }
    result.update(row_stats(row_lengths, supervised, segments, manifest.max_length, batch_size))
    val_lengths, val_supervised, val_segments, _ = _split_arrays(shard_set.split("val"))
    val = row_stats(val_lengths, val_supervised, val_segments, manifest.max_length, batch_size)
    result["val"] = {k: val[k] for k in ("rows", "tokens", "supervised_tokens")}
    return result


_ROWS = [
    ("mode", lambda s: s["mode"]),
    ("max_length", lambda s: s["max_length"]),
    ("packer", lambda s: s["packer"] or "-"),
    ("samples", lambda s: s["samples"]),
    ("dropped", lambda s: sum(s["dropped"].values())),
    ("truncated", lambda s: s["truncated"]),
    ("split across rows", lambda s: s["split"]),
    ("rows", lambda s: s["rows"]),
    ("lower_bound_rows", lambda s: s["lower_bound_rows"]),
    ("rows over bound", lambda s: _over_bound(s)),
    ("tokens", lambda s: s["tokens"]),
    ("supervised_tokens", lambda s: s["supervised_tokens"]),
    ("fill", lambda s: f"{s['fill']:.3f}"),
    ("pad_fraction_at_batch", lambda s: f"{s['pad_fraction_at_batch']:.3f}"),
    ("samples_per_row mean/max", lambda s: f"{s['samples_per_row']['mean']:.2f} / {s['samples_per_row']['max']}"),
    ("sample length p50/p90/p99", lambda s: "/".join(f"{s['sample_length'].get(f'p{p}', 0):.0f}" for p in PERCENTILES)),
    ("val rows", lambda s: s["val"]["rows"]),
    ("val supervised_tokens", lambda s: s["val"]["supervised_tokens"]),
]


# The bound counts the rows any packing of *whole* samples needs: it measures the concat
# packer only. Padding rows hold one sample by design, and packed rows cut samples, so it
# neither bounds packed nor says anything about padding; the cell says so instead of a figure.
_NO_BOUND = {"padding": "n/a: one sample a row", "packed": "n/a: cuts samples"}


def _over_bound(s: dict) -> str:
    if s["mode"] in _NO_BOUND:
        return _NO_BOUND[s["mode"]]
    return f"{s['rows'] / s['lower_bound_rows'] - 1:+.2%}" if s["lower_bound_rows"] else "-"


def format_table(all_stats: list[dict], markdown: bool = False) -> str:
    """One column per shard set, one line per statistic."""
    header = ["statistic"] + [Path(s["path"]).name for s in all_stats]
    lines = [[name] + [str(get(s)) for s in all_stats] for name, get in _ROWS]
    if markdown:
        return markdown_table(header, lines)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt_line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt_line(header), fmt_line(["-" * w for w in widths])] + [fmt_line(r) for r in lines])


def plot(folders: list[Path], path: Path) -> None:
    """Sample-length and row-fill histograms, one colour per shard set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for folder in folders:
        shard_set = ShardSet.open(folder)
        max_length = shard_set.manifest.max_length
        row_lengths, _, _, sample_lengths = _split_arrays(shard_set.split("train"))
        label = Path(folder).name
        left.hist(sample_lengths, bins=50, alpha=0.5, label=label)
        right.hist(row_lengths / max_length, bins=np.linspace(0, 1, 41), alpha=0.5, label=label)
    left.set(title="sample length (tokens, after truncation)", xlabel="tokens", ylabel="samples")
    right.set(title="row fill", xlabel="tokens / max_length", ylabel="rows")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""What is in a shard set: row and sample statistics, a side-by-side table, histograms.

Row statistics are recomputed from the memory-mapped files (so they describe what
is really there); sample-level facts that only prep saw (dropped records, truncations,
the packing lower bound) come from the manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sftcli import markdown_table
from shards.batch import get_rows_batch
from shards.format import IGNORE_INDEX, ShardSet, SplitArrays, per_row_sum
from shards.order import epoch_rows

PERCENTILES = (50, 90, 99)
UNIGRAM_SMOOTHING = 0.5  # add-0.5 (Jeffreys): every vocabulary entry keeps a finite loss
LABEL_BATCH_ROWS = 1024  # rows collated at a time when counting labels: bounded memory on any split
ORDER_SEED = 1337  # python -m train's default --seed: the epoch whose batches --group-by-length measures


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


def label_counts(split: SplitArrays, vocab_size: int) -> np.ndarray:
    """How often each token id is a label the trainer takes a loss on, over a whole split.

    The labels come from `shards.batch.collate` itself, so "supervised token" means exactly
    what the training loss means: loss_mask 1, except each segment's first token.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, split.num_rows, LABEL_BATCH_ROWS):
        rows = np.arange(start, min(start + LABEL_BATCH_ROWS, split.num_rows))
        labels = get_rows_batch(split, rows, pad_token_id=0, isolation=False).labels  # pads are never labels
        counts += np.bincount(labels[labels != IGNORE_INDEX], minlength=vocab_size)
    return counts


def unigram_loss(train_counts: np.ndarray, val_counts: np.ndarray) -> float | None:
    """Cross-entropy (nats per label) on val of the add-0.5 unigram fitted on train; None without val labels.

    The reference a language model has to beat to show it uses context: this is what
    counting tokens alone gives.

    >>> round(unigram_loss(np.array([3, 1, 0]), np.array([1, 0, 1])), 4)  # p = 3.5/5.5, 0.5/5.5
    1.4249
    """
    if val_counts.sum() == 0:
        return None
    log_p = np.log(train_counts + UNIGRAM_SMOOTHING) - np.log(train_counts.sum() + UNIGRAM_SMOOTHING * len(train_counts))
    return float(-(val_counts * log_p).sum() / val_counts.sum())


def steps_for_supervised_tokens(folder: Path, supervised_tokens: int, batch_size: int) -> int:
    """Optimizer steps of `batch_size` rows that train on about `supervised_tokens` labels of this set.

    Layouts carry different labels per row, so equal steps are unequal training; this is
    how runs are given the same token budget (and, with warm-up as a fraction of the steps,
    the same schedule in tokens).
    """
    shard_set = ShardSet.open(folder)
    train = shard_set.split("train")
    per_row = label_counts(train, shard_set.manifest.vocab_size).sum() / max(train.num_rows, 1)
    return max(1, round(supervised_tokens / (per_row * batch_size)))


def drawn_pad_fractions(row_lengths: np.ndarray, batch_size: int, seed: int = ORDER_SEED) -> dict:
    """Padding a collator adds over the first epoch's batches as `python -m train` draws them: shuffled,
    and grouped by length (--group-by-length); the same rows either way.

    >>> drawn_pad_fractions(np.array([1, 8, 1, 8, 1, 8, 1, 8]), 2)
    {'pad_fraction_shuffled': 0.28, 'pad_fraction_grouped': 0.0}
    """
    fractions = {}
    for key, grouped in (("pad_fraction_shuffled", False), ("pad_fraction_grouped", True)):
        rows = epoch_rows(row_lengths, batch_size, seed=seed, epoch=0, shuffle=True, grouped=grouped)
        fractions[key] = pad_fraction_at_batch(row_lengths[rows], batch_size)
    return fractions


def shard_set_stats(folder: Path, batch_size: int = 16, group_by_length: bool = False) -> dict:
    """Everything `python -m shards stats` reports for one shard set (`group_by_length`: with
    `drawn_pad_fractions`)."""
    shard_set = ShardSet.open(folder)
    manifest, saved = shard_set.manifest, shard_set.manifest.stats
    row_lengths, supervised, segments, _ = _split_arrays(shard_set.split("train"))
    result = {
        "path": str(folder), "mode": manifest.mode, "max_length": manifest.max_length, "packer": manifest.packer,
        "loss_on": manifest.loss_on, "samples": saved.samples, "dropped": saved.dropped, "truncated": saved.truncated,
        "split": saved.split, "lower_bound_rows": saved.lower_bound_rows, "sample_length": saved.sample_length,
        "template": manifest.template.to_json(),
    }
    result.update(row_stats(row_lengths, supervised, segments, manifest.max_length, batch_size))
    if group_by_length:
        result.update(drawn_pad_fractions(row_lengths, batch_size))
    val_lengths, val_supervised, val_segments, _ = _split_arrays(shard_set.split("val"))
    val = row_stats(val_lengths, val_supervised, val_segments, manifest.max_length, batch_size)
    result["val"] = {k: val[k] for k in ("rows", "tokens", "supervised_tokens")}
    vocab_size = manifest.vocab_size
    result["unigram_val_loss"] = unigram_loss(label_counts(shard_set.split("train"), vocab_size),
                                              label_counts(shard_set.split("val"), vocab_size))
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
    ("pad_fraction shuffled/grouped", lambda s: f"{s['pad_fraction_shuffled']:.3f} / {s['pad_fraction_grouped']:.3f}"),
    ("samples_per_row mean/max", lambda s: f"{s['samples_per_row']['mean']:.2f} / {s['samples_per_row']['max']}"),
    ("sample length p50/p90/p99", lambda s: "/".join(f"{s['sample_length'].get(f'p{p}', 0):.0f}" for p in PERCENTILES)),
    ("val rows", lambda s: s["val"]["rows"]),
    ("val supervised_tokens", lambda s: s["val"]["supervised_tokens"]),
    ("unigram_val_loss", lambda s: "-" if s["unigram_val_loss"] is None else f"{s['unigram_val_loss']:.4f}"),
    ("template messages dropped", lambda s: _counts(s["template"]["dropped_messages"])),
    ("prompt_matches_generation", lambda s: _matches(s["template"])),
]


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def _matches(template: dict) -> str:
    """yes, or no with the first shape (roles) and turn where the training text before a reply is not
    what generation would see at that turn."""
    if template["prompt_matches_generation"]:
        return "yes"
    first = template["mismatches"][0]
    more = f" (+{len(template['mismatches']) - 1} shapes)" if len(template["mismatches"]) > 1 else ""
    return f"no: {first['roles']} turn {first['first_turn']}{more}"


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
    grouped = "pad_fraction_grouped" in all_stats[0]  # shown with --group-by-length only
    lines = [[name] + [str(get(s)) for s in all_stats] for name, get in _ROWS
             if grouped or name != "pad_fraction shuffled/grouped"]
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

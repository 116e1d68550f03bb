"""Section training: supervised tokens per second of each layout over its whole train split.

    supervised tokens/s = supervised tokens per row (the whole split, from `shards.stats`) x rows/s

Rows per second come from steps timed at the widths each layout really produces: of the
epoch's batches (the trainer's seeded order), `steps` are taken at evenly spaced quantiles of
their widths (the longest row of each), so their mean step time estimates the epoch's. One
`tiny` model per layout (same seed: the same initial weights), AdamW with the trainer's
defaults; the layouts take turns step by step (`common.rounds`). A step includes collating its
batch from the memory-mapped shards, as in `train.loop`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.common import Setup, clock, rounds

MODES = ("padding", "packed", "concat")


def quantile_batches(setup: Setup, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` of the first epoch's batches at evenly spaced quantiles of width; every batch's width."""
    from train.data import epoch_permutation

    order, lengths = setup.order, setup.split.row_lengths()
    batches = epoch_permutation(order.num_rows, order.seed, 0, True)[: order.batches_per_epoch * order.batch_size]
    batches = batches.reshape(order.batches_per_epoch, order.batch_size)
    widths = lengths[batches].max(axis=1)
    by_width = np.argsort(widths, kind="stable")
    picks = by_width[((np.arange(count) + 0.5) / count * len(by_width)).astype(np.int64)]
    return [batches[i] for i in picks], widths


def measure(shards_by_mode: dict[str, Path], batch_size: int = 16, steps: int = 6, seed: int = 0,
            model: str = "tiny") -> dict:
    from shards.stats import shard_set_stats

    setups = {mode: Setup(shards, batch_size, seed).with_model(model) for mode, shards in shards_by_mode.items()}
    plans, epoch_widths, timed_widths = {}, {}, {}
    for mode, setup in setups.items():
        batches, epoch_widths[mode] = quantile_batches(setup, steps)
        plans[mode] = iter(batches)
        timed_widths[mode] = [int(setup.split.row_lengths()[rows].max()) for rows in batches]
        setup.step(*_inputs(setup, batches[0]))  # warm-up

    def task(mode: str):
        setup = setups[mode]

        def step() -> dict:
            seconds, loss = clock(lambda: setup.step(*_inputs(setup, next(plans[mode]))))
            return {"seconds": seconds, "loss": loss}
        return step

    done = rounds({mode: task(mode) for mode in setups}, steps)
    result: dict = {"model": model, "batch_size": batch_size, "steps": steps, "by_mode": {}}
    for mode, setup in setups.items():
        stats = shard_set_stats(shards_by_mode[mode], batch_size)
        step_seconds = float(np.mean([r["seconds"] for r in done[mode]]))
        per_row = stats["supervised_tokens"] / stats["rows"]
        result["by_mode"][mode] = {
            "rows": stats["rows"], "supervised_tokens_per_row": per_row, "step_seconds": step_seconds,
            "mean_epoch_width": float(epoch_widths[mode].mean()),
            "timed_widths": timed_widths[mode],
            "supervised_tokens_per_second": per_row * batch_size / step_seconds,
            "final_loss": done[mode][-1]["loss"],
        }
    by_mode = result["by_mode"]
    for mode in set(by_mode) - {"padding"} if "padding" in by_mode else ():
        result[f"{mode}_over_padding"] = (by_mode[mode]["supervised_tokens_per_second"]
                                          / by_mode["padding"]["supervised_tokens_per_second"])
    result["checks"] = check_same_samples({mode: s.shard_set.manifest for mode, s in setups.items()})
    return result


def _inputs(setup: Setup, rows: np.ndarray) -> tuple[dict, int]:
    inputs, batch = setup.batch(rows)
    return inputs, batch.supervised_tokens


def check_same_samples(manifests: dict) -> dict:
    """The layouts were made from the same records, tokenizer and length; padding and concat hold
    the same samples with the same tokens (both truncate to max_length; packed cuts instead)."""
    values = list(manifests.values())
    checks = {
        "same_source": len({m.source_fingerprint for m in values}) == 1,
        "same_tokenizer": len({m.tokenizer_fingerprint for m in values}) == 1,
        "same_max_length": len({m.max_length for m in values}) == 1,
        "same_records": len({m.stats.records_read for m in values}) == 1,
    }
    if "padding" in manifests and "concat" in manifests:
        padding, concat = manifests["padding"].stats, manifests["concat"].stats
        checks["padding_concat_same_tokens"] = all(getattr(padding, k) == getattr(concat, k)
                                                   for k in ("samples", "tokens", "supervised_tokens"))
    return checks


def figures(t: dict) -> list[dict]:
    f, found = report.figure, []
    for mode, r in t["by_mode"].items():
        found += [f("training", f"{mode}_supervised_tokens_per_row", r["supervised_tokens_per_row"], "tokens"),
                  f("training", f"{mode}_step_seconds", r["step_seconds"], "s",
                    note=f"mean over widths {r['timed_widths']} (epoch mean {r['mean_epoch_width']:.0f})"),
                  f("training", f"{mode}_supervised_tokens_per_second", r["supervised_tokens_per_second"], "tokens/s")]
    found += [f("training", "concat_over_padding", t.get("concat_over_padding"), goal=(">=", 1.4)),
              f("training", "packed_over_padding", t.get("packed_over_padding")),
              report.checks("training", t["checks"])]
    return found

"""Section training: supervised tokens per second of each layout over its whole train split, for the model a
user trains (`gpt2-124m`) and the CPU toy the demo trains (`tiny`), side by side (README, Benchmarks 4):

    supervised tokens/s = supervised tokens per row (the whole split, from `shards.stats`) x rows/s
"""
from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np

from benchmarks import report
from benchmarks.common import Setup, clock, rounds
from prep.packing import Mode
from shards.stats import shard_set_stats
from train.attention import resolve_attention
from shards.order import epoch_permutation

MODES = get_args(Mode)
TOY = "tiny"  # its figures carry this suffix


def quantile_batches(setup: Setup, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` of the first epoch's batches at evenly spaced quantiles of width; every batch's width."""
    order, lengths = setup.order, setup.split.row_lengths()
    batches = epoch_permutation(order.num_rows, order.seed, 0, True)[: order.batches_per_epoch * order.batch_size]
    batches = batches.reshape(order.batches_per_epoch, order.batch_size)
    widths = lengths[batches].max(axis=1)
    by_width = np.argsort(widths, kind="stable")
    return [batches[i] for i in by_width[((np.arange(count) + 0.5) / count * len(by_width)).astype(np.int64)]], widths


def measure(shards_by_mode: dict[str, Path], batch_size: int = 16, steps: int = 6, seed: int = 0,
            model: str = TOY) -> dict:
    """Each layout's supervised tokens per row and step seconds, and their ratios to padding's; every layout on the
    attention `python -m train` picks by default here (`--attention auto`)."""
    import torch

    attention = resolve_attention("auto", torch.device("cpu")).name
    setups = {mode: Setup(shards, batch_size, seed, attention=attention).with_model(model)
              for mode, shards in shards_by_mode.items()}
    plans = {mode: quantile_batches(setup, steps) for mode, setup in setups.items()}
    for mode, setup in setups.items():
        setup.step(setup.batch(plans[mode][0][0]))  # warm-up
    done = rounds({mode: lambda s=setup, b=iter(plans[mode][0]): clock(lambda: s.step(s.batch(next(b))))
                   for mode, setup in setups.items()}, steps)
    first = next(iter(setups.values())).model  # why layouts differ more on one model than on another:
    head_share = first.get_output_embeddings().weight.numel() / sum(p.numel() for p in first.parameters())
    by_mode = {}
    for mode, setup in setups.items():
        stats, (batches, widths) = shard_set_stats(shards_by_mode[mode], batch_size), plans[mode]
        per_row, step_seconds = stats["supervised_tokens"] / stats["rows"], float(np.mean([s for s, _ in done[mode]]))
        by_mode[mode] = {
            "rows": stats["rows"], "supervised_tokens_per_row": per_row, "step_seconds": step_seconds,
            "round_seconds": [s for s, _ in done[mode]],  # the noise: one step per round, a width quantile each
            "mean_epoch_width": float(widths.mean()),
            "timed_widths": [int(setup.split.row_lengths()[rows].max()) for rows in batches],
            "supervised_tokens_per_second": per_row * batch_size / step_seconds, "final_loss": done[mode][-1][1]}
    over_padding = {f"{mode}_over_padding": by_mode[mode]["supervised_tokens_per_second"]
                    / by_mode["padding"]["supervised_tokens_per_second"] for mode in by_mode.keys() - {"padding"}
                    if "padding" in by_mode}
    return {"model": model, "attention": attention, "batch_size": batch_size, "steps": steps, "head_share": head_share,
            "by_mode": by_mode,
            **over_padding, "checks": check_same_samples({mode: s.shard_set.manifest for mode, s in setups.items()})}


def check_same_samples(manifests: dict) -> dict:
    """The layouts were made from the same records, tokenizer and length; padding and concat hold
    the same samples with the same tokens (both truncate to max_length; packed cuts instead)."""
    values = list(manifests.values())
    checks = {f"same_{name}": len({key(m) for m in values}) == 1 for name, key in (
        ("source", lambda m: m.source_fingerprint), ("tokenizer", lambda m: m.tokenizer_fingerprint),
        ("max_length", lambda m: m.max_length), ("records", lambda m: m.stats.records_read))}
    if "padding" in manifests and "concat" in manifests:
        padding, concat = manifests["padding"].stats, manifests["concat"].stats
        checks["padding_concat_same_tokens"] = all(getattr(padding, k) == getattr(concat, k)
                                                   for k in ("samples", "tokens", "supervised_tokens"))
    return checks


def figures(result: dict) -> list[dict]:
    """The user's model's figures, then the toy's (suffixed `_tiny`); the rows' figures once."""
    f, found = report.figure, []
    for t, suffix in ((result["model"], ""), (result["toy"], f"_{TOY}")):
        for mode, r in t["by_mode"].items():
            if not suffix:
                found.append(f("training", f"{mode}_supervised_tokens_per_row", r["supervised_tokens_per_row"], "tokens"))
            found += [f("training", f"{mode}_step_seconds{suffix}", r["step_seconds"], "s",
                        note=f"{t['model']}, {t['batch_size']} rows, {t['attention']} attention; mean of "
                             f"{', '.join(f'{s:.3g}' for s in r['round_seconds'])} s at widths {r['timed_widths']} "
                             f"(epoch mean {r['mean_epoch_width']:.0f})"),
                      f("training", f"{mode}_supervised_tokens_per_second{suffix}", r["supervised_tokens_per_second"],
                        "tokens/s")]
        why = (f"{t['model']}: the LM head, {t['head_share']:.0%} of its parameters, runs on supervised tokens "
               "only; the rest on every token, padding included")
        if "padding" in t["by_mode"] and "concat" in t["by_mode"]:  # the noise: each round's own ratio
            padding, concat = (t["by_mode"][m] for m in ("padding", "concat"))
            ratios = [concat["supervised_tokens_per_row"] / c / (padding["supervised_tokens_per_row"] / p)
                      for c, p in zip(concat["round_seconds"], padding["round_seconds"])]
            why += f"; the {len(ratios)} rounds' own ratios range from {min(ratios):.3g} to {max(ratios):.3g}"
        found += [f("training", f"concat_over_padding{suffix}", t.get("concat_over_padding"),
                    goal=None if suffix else (">=", 1.4), note=why),
                  f("training", f"packed_over_padding{suffix}", t.get("packed_over_padding"))]
    return found + [report.checks("training", {**result["model"]["checks"], **result["toy"]["checks"]})]

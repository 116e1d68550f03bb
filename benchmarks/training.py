"""Section training: supervised tokens per second of each layout over its whole train split, for the model a
user trains (`gpt2-124m`) and the CPU toy the demo trains (`tiny`), side by side (README, Benchmarks 4):

    supervised tokens/s = supervised tokens per row (the whole split, from `shards.stats`) x rows/s

Four layouts: padding rows drawn at random (`padding`), padding rows in batches grouped by length as
users who pad draw them (`padding_grouped`: `python -m train --group-by-length`, Hugging Face's
`group_by_length`), packed, concat. Each round times one step of every layout, at the same width
quantile of its own epoch; a ratio is the median of the rounds' own ratios (paired: the same round,
so a change in the machine's load hits both), with their interquartile range beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np

from benchmarks import report
from benchmarks.common import Setup, clock, median, paired_ratio, rounds
from prep.packing import Mode
from shards.order import epoch_rows
from shards.stats import shard_set_stats
from train.attention import resolve_attention

MODES = get_args(Mode)
GROUPED = "padding_grouped"  # the padding shards, batches grouped by length
TOY = "tiny"  # its figures carry this suffix
RATIOS = {"concat_over_padding": ("concat", "padding"), "packed_over_padding": ("packed", "padding"),
          "concat_over_grouped_padding": ("concat", GROUPED), "grouped_padding_over_padding": (GROUPED, "padding")}


def quantile_batches(setup: Setup, count: int, grouped: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """`count` of the first epoch's batches (as `python -m train` draws them, `--group-by-length` with
    `grouped`) at evenly spaced quantiles of width; every batch's width."""
    order, lengths = setup.order, setup.split.row_lengths()
    batches = epoch_rows(lengths, order.batch_size, seed=order.seed, epoch=0, shuffle=True, grouped=grouped)
    batches = batches.reshape(order.batches_per_epoch, order.batch_size)
    widths = lengths[batches].max(axis=1)
    by_width = np.argsort(widths, kind="stable")
    return [batches[i] for i in by_width[((np.arange(count) + 0.5) / count * len(by_width)).astype(np.int64)]], widths


def measure(shards_by_mode: dict[str, Path], batch_size: int = 16, steps: int = 6, seed: int = 0,
            model: str = TOY) -> dict:
    """Each layout's supervised tokens per row and step seconds, and the paired ratios of `RATIOS`; every layout
    on the attention `python -m train` picks by default here (`--attention auto`)."""
    import torch

    attention = resolve_attention("auto", torch.device("cpu")).name
    layouts = {**shards_by_mode, **({GROUPED: shards_by_mode["padding"]} if "padding" in shards_by_mode else {})}
    setups = {name: Setup(shards, batch_size, seed, attention=attention).with_model(model)
              for name, shards in layouts.items()}
    plans = {name: quantile_batches(setup, steps, grouped=name == GROUPED) for name, setup in setups.items()}
    for name, setup in setups.items():
        setup.step(setup.batch(plans[name][0][0]))  # warm-up
    done = rounds({name: lambda s=setup, b=iter(plans[name][0]): clock(lambda: s.step(s.batch(next(b))))
                   for name, setup in setups.items()}, steps)
    first = next(iter(setups.values())).model  # why layouts differ more on one model than on another:
    head_share = first.get_output_embeddings().weight.numel() / sum(p.numel() for p in first.parameters())
    by_mode = {}
    for name, setup in setups.items():
        stats, (batches, widths) = shard_set_stats(layouts[name], batch_size), plans[name]
        per_row, seconds = stats["supervised_tokens"] / stats["rows"], [s for s, _ in done[name]]
        by_mode[name] = {
            "rows": stats["rows"], "supervised_tokens_per_row": per_row, "step_seconds": median(seconds),
            "round_seconds": seconds,  # the noise: one step per round, a width quantile each
            "round_supervised_tokens_per_second": [per_row * batch_size / s for s in seconds],
            "mean_epoch_width": float(widths.mean()),
            "timed_widths": [int(setup.split.row_lengths()[rows].max()) for rows in batches],
            "supervised_tokens_per_second": per_row * batch_size / median(seconds), "final_loss": done[name][-1][1]}
    ratios = {key: paired_ratio(by_mode[a]["round_supervised_tokens_per_second"],
                                by_mode[b]["round_supervised_tokens_per_second"])
              for key, (a, b) in RATIOS.items() if a in by_mode and b in by_mode}
    return {"model": model, "attention": attention, "batch_size": batch_size, "steps": steps, "head_share": head_share,
            "by_mode": by_mode, "ratios": ratios, **{key: r["median"] for key, r in ratios.items()},
            "checks": check_same_samples({mode: setups[mode].shard_set.manifest for mode in shards_by_mode})}


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
            if not suffix and mode != GROUPED:
                found.append(f("training", f"{mode}_supervised_tokens_per_row", r["supervised_tokens_per_row"], "tokens"))
            found += [f("training", f"{mode}_step_seconds{suffix}", r["step_seconds"], "s",
                        note=f"{t['model']}, {t['batch_size']} rows, {t['attention']} attention; median of "
                             f"{', '.join(f'{s:.3g}' for s in r['round_seconds'])} s at widths {r['timed_widths']} "
                             f"(epoch mean {r['mean_epoch_width']:.0f})"),
                      f("training", f"{mode}_supervised_tokens_per_second{suffix}", r["supervised_tokens_per_second"],
                        "tokens/s")]
        head = (f"{t['model']}: the LM head, {t['head_share']:.0%} of its parameters, runs on supervised tokens "
                "only; the rest on every token, padding included")
        why = {"concat_over_grouped_padding": "grouped padding wastes few slots, so what is left is the cost per "
                                              "token: on a CPU the label-only head's share scales with supervised "
                                              "tokens alike in both layouts"}
        for key in RATIOS:
            r = t["ratios"].get(key)
            how = "" if r is None else (
                f"median of the {len(r['rounds'])} rounds' own ratios of supervised tokens/s (each round: one step of "
                f"each layout at the same width quantile), interquartile range {r['q1']:.3g}-{r['q3']:.3g}; ")
            found.append(f("training", f"{key}{suffix}", t.get(key),
                           goal=(">=", 1.4) if key == "concat_over_padding" and not suffix else None,
                           note=how + why.get(key, head)))
    return found + [report.checks("training", {**result["model"]["checks"], **result["toy"]["checks"]})]

"""Section 4, training: supervised tokens per second of each layout, same model, same machine, same run.

One `tiny` model per layout (same seed, so the same initial weights), each with its own AdamW
and shuffled row order. After one warm-up step each, the layouts take turns step by step (the
order rotates every round), so a change in the machine's load hits all of them alike; each
round gives one ratio per layout against padding, and the figure is the median over rounds.
A step's time includes drawing its batch from the memory-mapped shards, as in `train.loop`.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import clock, median, optimizer_for, train_step

MODES = ("padding", "packed", "concat")


def measure(shards_by_mode: dict[str, Path], batch_size: int = 16, steps: int = 6, seed: int = 0,
            model_name: str = "tiny") -> dict:
    import torch
    from transformers import AutoTokenizer

    from shards.format import ShardSet
    from train.data import RowOrder
    from train.loop import get_batch
    from train.model import load_model

    cpu = torch.device("cpu")
    runs = {}
    for mode, shards in shards_by_mode.items():
        shard_set = ShardSet.open(shards)
        split = shard_set.split("train")
        tok = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
        model = load_model(model_name, tok, seed=seed)
        model.train()
        runs[mode] = dict(manifest=shard_set.manifest, split=split, model=model, optimizer=optimizer_for(model),
                          order=RowOrder(split.num_rows, batch_size, seed=seed, shuffle=True),
                          pad=shard_set.manifest.pad_token_id, steps=[])

    def one_step(run: dict) -> dict:
        def step():
            inputs, batch = get_batch(run["split"], run["order"].next_rows(), run["pad"], True, cpu)
            loss = train_step(run["model"], run["optimizer"], inputs, batch.supervised_tokens)
            return batch, loss

        seconds, (batch, loss) = clock(step)
        return {"seconds": seconds, "tokens": batch.tokens, "supervised_tokens": batch.supervised_tokens,
                "slots": batch.slots, "loss": loss / max(batch.supervised_tokens, 1)}

    modes = list(runs)
    for mode in modes:  # warm-up
        one_step(runs[mode])
    for r in range(steps):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            runs[mode]["steps"].append(one_step(runs[mode]))

    result: dict = {"model": model_name, "batch_size": batch_size, "steps": steps, "by_mode": {}}
    for mode, run in runs.items():
        done = run["steps"]
        result["by_mode"][mode] = {
            "shards": str(shards_by_mode[mode]),
            "tokens_per_second": median(s["tokens"] / s["seconds"] for s in done),
            "supervised_tokens_per_second": median(s["supervised_tokens"] / s["seconds"] for s in done),
            "step_seconds": median(s["seconds"] for s in done),
            "padding_fraction": 1 - sum(s["tokens"] for s in done) / sum(s["slots"] for s in done),
            "supervised_tokens_per_row": sum(s["supervised_tokens"] for s in done) / (len(done) * batch_size),
            "final_loss": done[-1]["loss"],
        }
    if "padding" in runs:
        for mode in runs:
            if mode != "padding":
                result[f"{mode}_over_padding"] = median(
                    a["supervised_tokens"] / a["seconds"] / (b["supervised_tokens"] / b["seconds"])
                    for a, b in zip(runs[mode]["steps"], runs["padding"]["steps"]))
    result["checks"] = check_same_samples({mode: run["manifest"] for mode, run in runs.items()})
    return result


def check_same_samples(manifests: dict[str, dict]) -> dict:
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
        checks["padding_concat_same_tokens"] = all(
            getattr(padding, k) == getattr(concat, k) for k in ("samples", "tokens", "supervised_tokens"))
    return checks

"""Section kernels: per-sample attention and the lean step against today's dense-mask path, on CPU.

* The attention op alone, forward + backward, GPT-2 124M head shapes (12 heads of 64), on the
  real concat rows of the embedded sample at max-length 1024: SDPA with the dense block-causal
  mask transformers builds for rows of several samples, against `varlen` (the samples regrouped
  and run through causal SDPA, train/attention.py). Interleaved rounds; outputs compared.
* The whole train step of the `gpt2-124m` shape at 1024 (`--kernel-rows` rows): today's path
  (sdpa + dense mask + full logits) against varlen + the label-only head, with and without
  --flatten; padding rows under causal sdpa are the reference. Each variant runs in its own
  process (`python -m benchmarks.kernels VARIANT SHARDS ...`), which also gives its peak memory;
  a process holding only the model and its optimizer state is the memory baseline.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path

import click

from benchmarks import report
from benchmarks.common import Setup, clock, median, proc_memory, python_module, rounds, run_process

# variant: (layout, attention, label-only head, flatten)
VARIANTS = {"padding_sdpa": ("padding", "sdpa", False, False), "dense": ("concat", "sdpa", False, False),
            "lean": ("concat", "varlen", True, False), "lean_flatten": ("concat", "varlen", True, True),
            "state_only": ("concat", "varlen", True, False)}
HEADS, HEAD_DIM = 12, 64  # GPT-2 124M


def attention_op(shards: Path, rows: int, repeats: int, seed: int = 0) -> dict:
    """Seconds of forward + backward of dense-mask SDPA and of varlen over the first `rows` rows' samples."""
    import torch
    import torch.nn.functional as F

    from train.attention import document_ids, varlen_attention_forward

    inputs, batch = Setup(shards, rows, attention="varlen").batch(torch.arange(rows).numpy())
    width, index = batch.input_ids.shape[1], inputs["varlen_index"]
    documents = torch.from_numpy(document_ids(batch.sequence_starts, batch.sequence_lengths, rows, width))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (documents[:, None, :, None] == documents[:, None, None, :]) & causal  # rows x 1 x L x L, as transformers'
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(rows, HEADS, width, HEAD_DIM, generator=generator) for _ in range(4))

    def run(kernel):
        def timed():
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            seconds, out = clock(lambda: _backward(kernel(*leaves), grad))
            return {"seconds": seconds, "out": out}
        return timed

    def dense(*qkv):
        return F.scaled_dot_product_attention(*qkv, attn_mask=mask)

    def varlen(*qkv):
        return varlen_attention_forward(None, *qkv, None, varlen_index=index)[0].transpose(1, 2)

    tasks = {"dense": run(dense), "varlen": run(varlen)}
    rounds(tasks, 1)  # warm-up
    done = rounds(tasks, repeats)
    real = documents >= 0
    error = (done["dense"][-1]["out"] - done["varlen"][-1]["out"]).abs().transpose(1, 2)[real].max().item()
    return {"rows": rows, "width": width, "samples": len(batch.sequence_lengths),
            "dense_seconds": median(r["seconds"] for r in done["dense"]),
            "varlen_seconds": median(r["seconds"] for r in done["varlen"]),
            "varlen_over_dense": median(a["seconds"] / b["seconds"] for a, b in zip(done["varlen"], done["dense"])),
            "max_abs_difference": error}


def _backward(out, grad):
    (out * grad).sum().backward()
    return out.detach()


def step_variants(shards: dict[str, Path], model: str, rows: int) -> dict:
    """Each variant's step seconds and peak memory, each in a fresh process; memory above the state-only process."""
    runs = {name: json.loads(run_process(python_module("benchmarks.kernels", name, shards[layout], model, rows))["stdout"])
            for name, (layout, *_) in VARIANTS.items()}
    base = runs.pop("state_only")["peak_rss_bytes"]
    result = {name: {**r, "extra_mib": (r["peak_rss_bytes"] - base) / 2**20} for name, r in runs.items()}
    result["lean_over_dense"] = result["lean"]["seconds"] / result["dense"]["seconds"]
    result["label_head_extra_memory_ratio"] = result["lean"]["extra_mib"] / result["dense"]["extra_mib"]
    return {"model": model, "rows": rows, "state_only_peak_mib": base / 2**20, "variants": result}


def figures(k: dict) -> list[dict]:
    f, op, steps = report.figure, k["attention"], k["step"]
    found = [f("kernels", f"varlen_over_dense_attention_{k['max_length']}", op["varlen_over_dense"], goal=("<=", 0.5),
               note=f"{op['samples']} samples in {op['rows']} rows; outputs differ by {op['max_abs_difference']:.1e}")]
    for name, r in steps["variants"].items():
        if isinstance(r, dict):
            found += [f("kernels", f"{name}_step_seconds", r["seconds"], "s"),
                      f("kernels", f"{name}_step_extra_mib", r["extra_mib"], "MiB")]
    return found + [
        f("kernels", f"lean_over_dense_step_{k['max_length']}", steps["variants"]["lean_over_dense"], goal=("<=", 0.85),
          note=f"{steps['model']}, {steps['rows']} rows; varlen + label-only head over sdpa + dense mask + full logits"),
        f("kernels", "label_head_extra_memory_ratio", steps["variants"]["label_head_extra_memory_ratio"],
          goal=("<=", 0.6), note="step peak above the model + optimizer state: lean over dense")]


@click.command()
@click.argument("variant", type=click.Choice(list(VARIANTS)))
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("model")
@click.argument("rows", type=int)
def main(variant: str, shards: Path, model: str, rows: int) -> None:
    """One variant's step in this process: model + optimizer state, a warm-up step, a timed step; its memory."""
    _, attention, label_head, flatten = VARIANTS[variant]
    setup = Setup(shards, rows, attention=attention, flatten=flatten).with_model(model, label_head=label_head)
    for p in setup.model.parameters():  # the optimizer's state exists before any step is measured
        p.grad = p.detach().new_zeros(p.shape)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    seconds = None
    if variant != "state_only":
        setup.step(*_counts(setup.batch()))
        inputs, supervised = _counts(setup.batch())
        gc.collect()
        seconds, _ = clock(setup.step, inputs, supervised)
    print(json.dumps({"seconds": seconds, **proc_memory()}))


def _counts(drawn):
    inputs, batch = drawn
    return inputs, batch.supervised_tokens


if __name__ == "__main__":
    main()

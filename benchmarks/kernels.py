"""Section kernels: `varlen` on CPU, the attention op alone (GPT-2 124M head shapes, the real concat rows at
1024) against its lower bound (causal SDPA over whole rows, no isolation: the same rows, nothing kept apart)
and against the dense-mask path; and the whole train step, each step variant in its own process.
"""
from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import report
from benchmarks.common import Setup, clock, in_process, median, proc_memory, rounds
from train.attention import document_ids, varlen_attention_forward

# variant: (layout, attention, label-only head, flatten); padding under causal sdpa is the reference
VARIANTS = {"padding_sdpa": ("padding", "sdpa", False, False), "dense": ("concat", "sdpa", False, False),
            "lean": ("concat", "varlen", True, False), "lean_flatten": ("concat", "varlen", True, True)}
HEADS, HEAD_DIM = 12, 64  # GPT-2 124M


def slot_overhead(index, sequence_lengths) -> float:
    """Query-key pairs varlen computes (each pass: count x its longest's causal triangle) over the ideal ones
    (each sample's own triangle): what padding samples to their group's longest costs.

    Rows [3 | 2 | pad] and [4 | pad pad], width 6: the 4-token row keeps its causal pass over the whole row
    (21 pairs), the 2 and the 3 get passes of their own (3 + 6); ideal 6 + 3 + 10:

    >>> import numpy as np
    >>> from train.attention import varlen_index
    >>> slot_overhead(varlen_index(np.array([0, 3, 6]), np.array([3, 2, 4]), rows=2, width=6), np.array([3, 2, 4]))
    1.5789473684210527
    """
    triangle = lambda n: n * (n + 1) // 2  # noqa: E731 - causal pairs of n tokens, the diagonal included
    computed = sum(int(g.shape[0]) * triangle(int(g.shape[1])) for g in (index.single_rows, *index.groups))
    return computed / sum(triangle(int(n)) for n in sequence_lengths)


def attention_op(shards: Path, rows: int, repeats: int, seed: int = 0) -> dict:
    """Seconds of forward + backward of varlen, of causal SDPA over whole rows (no isolation: the bound) and of
    dense-mask SDPA, over the first `rows` rows' samples; each ratio the median of the rounds' own ratios."""
    inputs, batch = Setup(shards, rows, attention="varlen").batch(torch.arange(rows).numpy())
    width, index = batch.input_ids.shape[1], inputs["varlen_index"]
    documents = torch.from_numpy(document_ids(batch.sequence_starts, batch.sequence_lengths, rows, width))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (documents[:, None, :, None] == documents[:, None, None, :]) & causal  # rows x 1 x L x L, as transformers'
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(rows, HEADS, width, HEAD_DIM, generator=generator) for _ in range(4))
    kernels = {"dense": lambda *qkv: F.scaled_dot_product_attention(*qkv, attn_mask=mask),
               "causal": lambda *qkv: F.scaled_dot_product_attention(*qkv, is_causal=True),
               "varlen": lambda *qkv: varlen_attention_forward(None, *qkv, None, varlen_index=index)[0].transpose(1, 2)}

    def timed(kernel):
        def run():
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            seconds, out = clock(kernel, *leaves)
            return seconds + clock(lambda: (out * grad).sum().backward())[0], out.detach()
        return run

    tasks = {name: timed(kernel) for name, kernel in kernels.items()}
    rounds(tasks, 1)  # warm-up
    done = rounds(tasks, repeats)
    error = (done["dense"][-1][1] - done["varlen"][-1][1]).abs().transpose(1, 2)[documents >= 0].max().item()
    return {"rows": rows, "width": width, "samples": len(batch.sequence_lengths), "max_abs_difference": error,
            **{f"{name}_seconds": median(seconds for seconds, _ in done[name]) for name in kernels},
            "varlen_over_dense": median(a[0] / b[0] for a, b in zip(done["varlen"], done["dense"])),
            "varlen_over_causal": median(a[0] / b[0] for a, b in zip(done["varlen"], done["causal"])),
            "varlen_slot_overhead": slot_overhead(index, batch.sequence_lengths)}


def measure(shards: dict[str, Path], model: str, repeats: int, rows: int = 1, steps: int = 3) -> dict:
    """The attention op on 2 concat rows; each step variant's median step seconds and the step's memory,
    each variant in a fresh process."""
    runs = {name: in_process(variant_step, variant=name, shards=shards[layout], model=model, rows=rows,
                             steps=steps)["result"] for name, (layout, *_) in VARIANTS.items()}
    return {"max_length": 1024, "attention": attention_op(shards["concat"], 2, repeats),
            "step": {"model": model, "rows": rows, "steps": steps, "variants": runs,
                     "lean_over_dense": runs["lean"]["seconds"] / runs["dense"]["seconds"],
                     "label_head_extra_memory_ratio": runs["lean"]["extra_mib"] / runs["dense"]["extra_mib"]}}


def _settle() -> dict:
    """Free what can be freed (Python's garbage, glibc's retained free pages), then read the memory."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return proc_memory()


def variant_step(variant: str, shards: str, model: str, rows: int, steps: int) -> dict:
    """Run by `measure` in its own process: the model and its optimizer state, a warm-up step,
    then `steps` timed steps; `extra_mib` is their peak resident memory above the state alone."""
    _, attention, label_head, flatten = VARIANTS[variant]
    setup = Setup(Path(shards), rows, attention=attention, flatten=flatten).with_model(model, label_head=label_head)
    for p in setup.model.parameters():  # AdamW allocates its state on the first step: make it exist now
        p.grad = torch.zeros_like(p)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    drawn = [setup.batch() for _ in range(steps + 1)]
    # VmRSS, not RssAnon: the peak (VmHWM) counts file-backed pages too (mapped libraries, shards).
    base = _settle()
    setup.step(drawn[0])  # warm-up: first-call allocations and code paths stay off the clock and the peak
    warm = _settle()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS: the peak of what follows
    seconds = [clock(setup.step, d)[0] for d in drawn[1:]]
    peak = proc_memory()["peak_rss_bytes"]
    return {"seconds": median(seconds), "all_seconds": seconds, "state_mib": base["rss_bytes"] / 2**20,
            "after_warmup_mib": warm["rss_bytes"] / 2**20, "extra_mib": (peak - base["rss_bytes"]) / 2**20}


def figures(k: dict) -> list[dict]:
    f, op, steps, length = report.figure, k["attention"], k["step"], k["max_length"]
    rounds = (f"{op['samples']} samples in {op['rows']} rows, forward + backward, median of the rounds' own ratios")
    found = [f("kernels", f"varlen_over_causal_attention_{length}", op.get("varlen_over_causal"), goal=("<=", 0.6),
               note=f"{rounds}; over causal SDPA on the whole rows without isolation (the lower bound: the same "
                    "rows, one triangle a row, nothing kept apart)"),
             f("kernels", f"varlen_over_dense_attention_{length}", op["varlen_over_dense"],
               note=f"{rounds}; over SDPA with the dense rows x 1 x L x L mask; outputs differ by "
                    f"{op['max_abs_difference']:.1e}"),
             f("kernels", f"varlen_slot_overhead_{length}", op.get("varlen_slot_overhead"),
               note="causal query-key pairs varlen computes (each sample padded to its group's longest) over each "
                    "sample's own triangle")]
    for name, r in steps["variants"].items():
        found += [f("kernels", f"{name}_step_seconds", r["seconds"], "s"),
                  f("kernels", f"{name}_step_extra_mib", r["extra_mib"], "MiB")]
    return found + [
        f("kernels", f"lean_over_dense_step_{length}", steps["lean_over_dense"], goal=("<=", 0.85),
          note=f"{steps['model']}, {steps['rows']} rows, median of {steps['steps']} steps; varlen + label-only head "
               "over sdpa + dense mask + full logits"),
        f("kernels", "label_head_extra_memory_ratio", steps["label_head_extra_memory_ratio"], goal=("<=", 0.6),
          note="peak resident memory of the timed steps above the model + optimizer state (same process, after a "
               "warm-up step): lean over dense")]

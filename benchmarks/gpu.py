"""`python -m benchmarks.gpu` (`make bench-gpu`): gpt2-124m at 16 x 1024, fp16, on a CUDA device -> results-gpu.json.

Without a CUDA device it prints one line saying so and exits 0 (it never runs in CI). For every
layout (padding, packed, concat) x attention (sdpa, varlen, flash, flex) x --compile x --flatten
that can run (a refused combination is listed with its reason): tokens/s, supervised tokens/s,
model-FLOPs utilisation against the measured fp16 matmul peak, peak memory, and the step's data
share (drawing and collating the batch from the memory-mapped shards, copying it to the device).

Model FLOPs, as PaLM (appendix B) and nanoGPT's `estimate_mfu`, but with attention counted as
what each kernel has to compute:

    flops = 6 * N * real_tokens + 12 * n_layer * d_model * sum over attended squares of length^2

N: the matmul parameters (all but the position embeddings). The squares: sdpa (dense mask, or
causal over a padded row) computes every row's full width^2; varlen computes width^2 for a row
of one sample and longest^2 for each regrouped sample; flash and flex compute each sample's own
length^2. Padding tokens add no 6N term: the device computes them, nobody uses them.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from benchmarks import common, report
from sftcli import click_options, opt

HERE = Path(__file__).resolve().parent
MODES = ("padding", "packed", "concat")
ATTENTIONS = ("sdpa", "varlen", "flash", "flex")


@dataclass(frozen=True)
class GpuSettings:
    out: Path = opt(HERE / "results-gpu.json", "where the results JSON goes")
    work: Path = opt(HERE / "work" / "gpu", "folder for the shard sets")
    copies: int = opt(10, "times the embedded sample is repeated for the shards")
    steps: int = opt(20, "timed steps per configuration")
    warmup: int = opt(5, "untimed steps before them (compiling included)")
    modes: str = opt(",".join(MODES), "comma-separated layouts")
    attentions: str = opt(",".join(ATTENTIONS), "comma-separated --attention paths")
    compile: str = opt("off,on", "--compile settings to measure")
    flatten: str = opt("off,on", "--flatten settings to measure")
    max_length: int = opt(1024, "prep --max-length of the shards")
    batch_size: int = opt(16, "rows per step")


def matmul_parameters(model) -> int:
    """Parameters that enter a matmul for every token: all but the position embeddings (the tied
    token embedding stays in: it is the LM head's weight)."""
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    return sum(p.numel() for p in model.parameters()) - (positions.weight.numel() if positions is not None else 0)


def model_flops(n_params: int, n_layer: int, d_model: int, tokens: int, squares: float) -> float:
    """Training FLOPs of a step (see the module docstring).

    >>> model_flops(123_653_376, 12, 768, 1024, 1024**2) / 1024 / 1e9  # nanoGPT: 6N + 12*L*H*Q*T per token
    0.855166464
    """
    return 6.0 * n_params * tokens + 12.0 * n_layer * d_model * squares


def attended_squares(inputs: dict, batch, attention: str) -> float:
    """Sum of length^2 over what the attention kernel computes for this batch."""
    rows, width = batch.input_ids.shape
    if attention == "sdpa":
        return float(rows * width**2)
    if attention == "varlen":
        index = inputs.get("varlen_index")
        return float(rows * width**2 if index is None else index.squares)
    return float((batch.sequence_lengths.astype(np.float64) ** 2).sum())


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak_flops(device, dtype, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a size x size matmul in `dtype`, the best of `repeats` after warm-up: what MFU divides by."""
    import torch

    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        seconds, _ = common.clock(lambda: (a @ b, synchronize(device)))
        best = min(best, seconds)
    return 2.0 * size**3 / best


def run_config(shards: Path, device, steps: int, warmup: int, batch_size: int = 16, model: str = "gpt2-124m",
               attention: str = "sdpa", compile: bool = False, flatten: bool = False,  # noqa: A002
               precision: str = "fp16", peak: float | None = None) -> dict:
    """`steps` timed steps (after `warmup`) on these shards; medians of the per-step figures."""
    import torch

    from train.attention import resolve_attention

    resolve_attention(attention, device, training=True, isolation=True, flatten=flatten)  # refuses with its line
    setup = common.Setup(shards, batch_size, device=device, attention=attention, flatten=flatten, compile=compile)
    setup.with_model(model, precision, pad_vocab_to=64)
    config, n_params, records = setup.model.config, matmul_parameters(setup.model), []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        synchronize(device)
        data_seconds, (inputs, batch) = common.clock(lambda: (setup.batch(), synchronize(device))[0])
        compute_seconds, loss = common.clock(setup.step, inputs, batch.supervised_tokens)  # .item() syncs
        if i >= warmup:
            flops = model_flops(n_params, config.n_layer, config.n_embd, batch.tokens,
                                attended_squares(inputs, batch, attention))
            records.append(dict(seconds=data_seconds + compute_seconds, data=data_seconds, tokens=batch.tokens,
                                supervised=batch.supervised_tokens, loss=loss, flops=flops))
    per_second = lambda key: common.median(r[key] / r["seconds"] for r in records)  # noqa: E731
    seconds = common.median(r["seconds"] for r in records)
    return {"shards": str(shards), "attention": attention, "compile": compile, "flatten": flatten, "model": model,
            "batch_size": batch_size, "steps": steps, "step_seconds": seconds, "final_loss": records[-1]["loss"],
            "data_fraction": common.median(r["data"] for r in records) / seconds,
            "tokens_per_second": per_second("tokens"), "supervised_tokens_per_second": per_second("supervised"),
            "mfu": per_second("flops") / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def figures(runs: dict, peak: float) -> list[dict]:
    f = report.figure
    found = [f("gpu", "matmul_peak_tflops_fp16", peak / 1e12, "TFLOP/s")]
    for key, r in runs.items():
        found += [f("gpu", f"{key}_supervised_tokens_per_second", r["supervised_tokens_per_second"], "tokens/s"),
                  f("gpu", f"{key}_mfu", r["mfu"]), f("gpu", f"{key}_peak_memory_gib", r["peak_memory_gib"], "GiB"),
                  f("gpu", f"{key}_data_fraction", r["data_fraction"])]
    for attention in ATTENTIONS:
        for options in ("", "_compile", "_flatten", "_compile_flatten"):
            a, b = runs.get(f"concat_{attention}{options}"), runs.get(f"padding_{attention}{options}")
            if a and b:
                found.append(f("gpu", f"concat_over_padding_{attention}{options}",
                               a["supervised_tokens_per_second"] / b["supervised_tokens_per_second"], goal=(">=", 1.4)))
    return found


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(GpuSettings)
def main(**options) -> None:
    """Measure gpt2-124m training throughput and MFU on a CUDA device (see benchmarks/gpu.py)."""
    import torch

    if not torch.cuda.is_available():
        click.echo("benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    from train.attention import AttentionError

    s = GpuSettings(**options)
    started, clock0, device = datetime.datetime.now(datetime.timezone.utc), time.perf_counter(), torch.device("cuda")
    data = common.write_copies(s.work / f"sample-x{s.copies}.jsonl", common.sample_records(), s.copies)
    pick = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    peak, runs, skipped = measured_peak_flops(device, torch.float16), {}, {}
    for mode in pick(s.modes):
        shards = common.build_shards(data, s.work / f"{mode}-{s.max_length}", mode, s.max_length)
        for attention in pick(s.attentions):
            for compiled in (c == "on" for c in pick(s.compile)):
                for flat in (f == "on" for f in pick(s.flatten)):
                    key = f"{mode}_{attention}" + "_compile" * compiled + "_flatten" * flat
                    click.echo(f"{key} ...", err=True)
                    try:
                        runs[key] = run_config(shards, device, s.steps, s.warmup, s.batch_size, attention=attention,
                                               compile=compiled, flatten=flat, peak=peak)
                    except AttentionError as e:
                        skipped[key] = str(e)
                    torch.cuda.empty_cache()
    results = {"started": started.isoformat(timespec="seconds"), "machine": common.machine(),
               "versions": common.versions(), "load_average": {"start": None, "end": common.load_average()},
               "settings": {k: str(v) for k, v in dataclasses.asdict(s).items()},
               "sections": {"gpu": {"peak_flops_fp16": peak, "runs": runs}}, "figures": figures(runs, peak),
               "skipped": skipped, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "seconds": time.perf_counter() - clock0}
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(report.figures_table(results["figures"]) + f"\n\n{s.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

"""`python -m benchmarks.gpu` (`make bench-gpu`): gpt2-124m at 16 x 1024, fp16, on a CUDA device -> results-gpu.json.

Without a CUDA device it prints one line saying so and exits 0. For every layout x attention x
--compile x --flatten that can run (a refused one is listed with its reason): tokens/s, supervised
tokens/s, MFU against the measured fp16 matmul peak, peak memory, and the data share of the step
(drawing and collating the batch from the shards, copying it to the device). Model FLOPs, as PaLM
(appendix B) and nanoGPT's `estimate_mfu`, with attention counted as what each kernel computes:

    flops = 6 * N * real_tokens + 12 * n_layer * d_model * sum over attended squares of length^2

N: the matmul parameters (all but the position embeddings). The squares: sdpa (dense mask, or causal
over a padded row) computes every row's full width^2; varlen width^2 for a row of one sample and, in
each of its passes, the pass's longest^2 per sample; flash and flex each sample's own length^2.
Padding tokens add no 6N term: the device computes them, nobody uses them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import common, report
from sftcli import click_options, opt
from train.attention import AttentionError, resolve_attention

HERE = Path(__file__).resolve().parent
# The matrix: layout x --attention x --compile x --flatten, gpt2-124m at 16 x 1024 in fp16 (issue 14).
MODES, ATTENTIONS, SWITCHES = ("padding", "packed", "concat"), ("sdpa", "varlen", "flash", "flex"), (False, True)
MODEL, BATCH_SIZE, MAX_LENGTH = "gpt2-124m", 16, 1024


@dataclass(frozen=True)
class GpuSettings:
    out: Path = opt(HERE / "results-gpu.json", "where the results JSON goes")
    work: Path = opt(HERE / "work" / "gpu", "folder for the shard sets")
    copies: int = opt(10, "times the embedded sample is repeated for the shards")
    steps: int = opt(20, "timed steps per configuration")
    warmup: int = opt(5, "untimed steps before them (compiling included)")
    only: str = opt("", "comma-separated parts of configuration names to run, e.g. 'varlen,sdpa' or "
                        "'concat_varlen': what fits a short device lease [the whole matrix]")


def matrix(only: str = "") -> list[tuple[str, str, str, bool, bool]]:
    """(name, layout, attention, compile, flatten) of each configuration to run: the whole matrix, or those
    whose name contains one of `only`'s comma-separated parts.

    >>> len(matrix()), [cell[0] for cell in matrix("concat_varlen_compile")]
    (48, ['concat_varlen_compile', 'concat_varlen_compile_flatten'])
    """
    parts = [part.strip() for part in only.split(",") if part.strip()]
    cells = [(f"{mode}_{attention}" + "_compile" * compiled + "_flatten" * flat, mode, attention, compiled, flat)
             for mode in MODES for attention, compiled, flat in itertools.product(ATTENTIONS, SWITCHES, SWITCHES)]
    return [cell for cell in cells if not parts or any(part in cell[0] for part in parts)]


def matmul_parameters(model) -> int:
    """All parameters but the position embeddings (the tied token embedding is the LM head's weight)."""
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
    index = inputs.get("varlen_index")
    if attention == "sdpa" or (attention == "varlen" and index is None):
        return float(rows * width**2)
    if attention == "varlen":
        return float(index.squares)
    return float((batch.sequence_lengths.astype(np.float64) ** 2).sum())


def measured_peak_flops(device, dtype, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a size x size matmul in `dtype`, the best of `repeats` after warm-up: what MFU divides by."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    timed = [common.clock(lambda: (a @ b, synchronize(device)))[0] for _ in range(3 + repeats)]
    return 2.0 * size**3 / min(timed[3:])


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(shards: Path, device, steps: int, warmup: int, batch_size: int = 16, model: str = "gpt2-124m",
               attention: str = "sdpa", compile: bool = False, flatten: bool = False,  # noqa: A002
               precision: str = "fp16", peak: float | None = None) -> dict:
    """`steps` timed steps (after `warmup`) on these shards; medians of the per-step figures."""
    resolve_attention(attention, device, training=True, isolation=True, flatten=flatten)  # refuses with its line
    setup = common.Setup(shards, batch_size, device=device, attention=attention, flatten=flatten, compile=compile)
    setup.with_model(model, precision, pad_vocab_to=64)
    config, n_params, records = setup.model.config, matmul_parameters(setup.model), []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup + steps):
        synchronize(device)
        data_seconds, (inputs, batch) = common.clock(lambda: (setup.batch(), synchronize(device))[0])
        compute_seconds, loss = common.clock(setup.step, (inputs, batch))  # .item() syncs
        squares = attended_squares(inputs, batch, attention)
        records.append(dict(seconds=data_seconds + compute_seconds, data=data_seconds, tokens=batch.tokens, loss=loss,
                            supervised=batch.supervised_tokens,
                            flops=model_flops(n_params, config.n_layer, config.n_embd, batch.tokens, squares)))
    records = records[warmup:]
    per_second = lambda key: common.median(r[key] / r["seconds"] for r in records)  # noqa: E731
    seconds = common.median(r["seconds"] for r in records)
    return {"step_seconds": seconds, "final_loss": records[-1]["loss"],
            "data_fraction": common.median(r["data"] for r in records) / seconds,
            "tokens_per_second": per_second("tokens"), "supervised_tokens_per_second": per_second("supervised"),
            "mfu": per_second("flops") / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def figures(runs: dict, peak: float) -> list[dict]:
    f, units = report.figure, {"supervised_tokens_per_second": "tokens/s", "mfu": "", "peak_memory_gib": "GiB",
                               "data_fraction": ""}
    found = [f("gpu", "matmul_peak_tflops_fp16", peak / 1e12, "TFLOP/s")]
    for key, r in runs.items():
        found += [f("gpu", f"{key}_{name}", r[name], unit) for name, unit in units.items()]
        kernel = key.removeprefix("concat_")
        if kernel != key and f"padding_{kernel}" in runs:  # the same kernel and options
            found.append(f("gpu", f"concat_over_padding_{kernel}", r["supervised_tokens_per_second"]
                           / runs[f"padding_{kernel}"]["supervised_tokens_per_second"], goal=(">=", 1.4)))
    return found


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(GpuSettings)
def main(**options) -> None:
    """Measure gpt2-124m training throughput and MFU on a CUDA device (see benchmarks/gpu.py)."""
    if not torch.cuda.is_available():
        click.echo("benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    s, device = GpuSettings(**options), torch.device("cuda")
    results = common.new_results(s)
    data = common.write_copies(s.work / f"sample-x{s.copies}.jsonl", common.sample_records(), s.copies)
    peak, runs = measured_peak_flops(device, torch.float16), {}
    shards = {}
    for key, mode, attention, compiled, flat in matrix(s.only):
        if mode not in shards:
            shards[mode] = common.build_shards(data, s.work / f"{mode}-{MAX_LENGTH}", mode, MAX_LENGTH)
        click.echo(f"{key} ...", err=True)
        try:
            runs[key] = run_config(shards[mode], device, s.steps, s.warmup, BATCH_SIZE, MODEL, attention, compiled,
                                   flat, peak=peak)
        except AttentionError as e:
            results["skipped"][key] = str(e)
        torch.cuda.empty_cache()
    results["sections"]["gpu"], results["figures"] = {"peak_flops_fp16": peak, "runs": runs}, figures(runs, peak)
    common.write_results(results, s.out)
    click.echo(report.figures_table(results["figures"]) + f"\n\n{s.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

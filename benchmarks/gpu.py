"""`python -m benchmarks.gpu` (`make bench-gpu`): gpt2-124m at 16 x 1024 on a CUDA device -> results-gpu.json.

Without a CUDA device it prints one line saying so and exits 0 (it never runs in CI). For each
precision and layout: tokens/s, supervised tokens/s, model-FLOPs utilisation against the
measured matmul peak of that precision, and the step split into its data share (drawing and
collating the batch from the memory-mapped shards, copying it to the device) and compute.

Model FLOPs count useful work only, as PaLM (appendix B) and nanoGPT's `estimate_mfu` do:
6 per matmul parameter per real token, plus attention, 12 * n_layer * d_model per token per
token of its context, the full square rather than the causal half. With isolation a token's
context is its own sample (its segment), so a row of segments s_1..s_k costs
6 N sum(s_i) + 12 L d sum(s_i^2); padding costs nothing (the device computes it, nobody uses it).
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
from shards.cli import click_options
from train.config import opt

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp16", "bf16")
MODES = ("padding", "concat")


@dataclass(frozen=True)
class GpuSettings:
    out: Path = opt(HERE / "results-gpu.json", "where the results JSON goes")
    work: Path = opt(HERE / "work" / "gpu", "folder for the shard sets")
    copies: int = opt(10, "times the embedded sample is repeated for the shards")
    steps: int = opt(30, "timed steps per configuration")
    warmup: int = opt(5, "untimed steps before them")
    max_length: int = opt(1024, "prep --max-length of the shards")
    batch_size: int = opt(16, "rows per step")


def matmul_parameters(model) -> int:
    """Parameters that enter a matmul for every token: all but the position embeddings (the tied
    token embedding stays in: it is the LM head's weight)."""
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    return sum(p.numel() for p in model.parameters()) - (positions.weight.numel() if positions is not None else 0)


def model_flops(n_params: int, n_layer: int, d_model: int, segment_lengths) -> float:
    """Training FLOPs of a batch whose rows hold samples (segments) of these lengths.

    >>> model_flops(123_653_376, 12, 768, [1024]) / 1024 / 1e9  # nanoGPT: 6N + 12*L*H*Q*T per token
    0.855166464
    """
    s = np.asarray(segment_lengths, dtype=np.float64)
    return float(6.0 * n_params * s.sum() + 12.0 * n_layer * d_model * (s * s).sum())


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


def run_config(shards: Path, precision: str, device, steps: int, warmup: int, batch_size: int = 16,
               model: str = "gpt2-124m", peak: float | None = None) -> dict:
    """`steps` timed steps (after `warmup`) on these shards; medians of the per-step figures."""
    from shards.batch import gather_rows

    setup = common.Setup(shards, batch_size, device=device).with_model(model, precision, pad_vocab_to=64)
    config = setup.model.config
    n_params = matmul_parameters(setup.model)
    records = []
    for i in range(warmup + steps):
        rows = setup.order.next_rows()
        synchronize(device)
        data_seconds, (inputs, batch) = common.clock(lambda: (setup.batch(rows), synchronize(device))[0])
        compute_seconds, loss = common.clock(setup.step, inputs, batch.supervised_tokens)  # .item() syncs
        if i >= warmup:
            segments = np.concatenate([np.asarray(s) for s in gather_rows(setup.split, rows)[2]])
            records.append(dict(seconds=data_seconds + compute_seconds, data=data_seconds, compute=compute_seconds,
                                tokens=batch.tokens, supervised=batch.supervised_tokens, loss=loss,
                                flops=model_flops(n_params, config.n_layer, config.n_embd, segments)))
    median = lambda key: common.median(r[key] for r in records)  # noqa: E731
    result = {"shards": str(shards), "precision": precision, "model": model, "batch_size": batch_size, "steps": steps,
              "matmul_parameters": n_params, "step_seconds": median("seconds"), "data_seconds": median("data"),
              "compute_seconds": median("compute"), "final_loss": records[-1]["loss"],
              "tokens_per_second": common.median(r["tokens"] / r["seconds"] for r in records),
              "supervised_tokens_per_second": common.median(r["supervised"] / r["seconds"] for r in records),
              "model_flops_per_second": common.median(r["flops"] / r["seconds"] for r in records)}
    result["data_fraction"] = result["data_seconds"] / result["step_seconds"]
    result["mfu"] = result["model_flops_per_second"] / peak if peak else None
    return result


def figures(runs: dict, peaks: dict) -> list[dict]:
    f = report.figure
    found = [f("gpu", f"matmul_peak_tflops_{p}", peaks[p] / 1e12, "TFLOP/s") for p in peaks]
    for key, r in runs.items():
        found += [f("gpu", f"{key}_tokens_per_second", r["tokens_per_second"], "tokens/s"),
                  f("gpu", f"{key}_supervised_tokens_per_second", r["supervised_tokens_per_second"], "tokens/s"),
                  f("gpu", f"{key}_mfu", r["mfu"]), f("gpu", f"{key}_step_ms", r["step_seconds"] * 1000, "ms"),
                  f("gpu", f"{key}_data_fraction", r["data_fraction"], note="collating + copying the batch")]
    for precision in PRECISIONS:
        a, b = runs.get(f"{precision}_concat"), runs.get(f"{precision}_padding")
        if a and b:
            found.append(f("gpu", f"{precision}_concat_over_padding",
                           a["supervised_tokens_per_second"] / b["supervised_tokens_per_second"]))
    return found


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(GpuSettings)
def main(**options) -> None:
    """Measure gpt2-124m training throughput and MFU on a CUDA device (see benchmarks/gpu.py)."""
    import torch

    if not torch.cuda.is_available():
        click.echo("benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    s = GpuSettings(**options)
    started, clock0, device = datetime.datetime.now(datetime.timezone.utc), time.perf_counter(), torch.device("cuda")
    data = common.write_copies(s.work / f"sample-x{s.copies}.jsonl", common.sample_records(), s.copies)
    shards = {mode: common.build_shards(data, s.work / f"{mode}-{s.max_length}", mode, s.max_length) for mode in MODES}
    precisions = [p for p in PRECISIONS if p != "bf16" or torch.cuda.is_bf16_supported()]
    peaks = {p: measured_peak_flops(device, {"fp16": torch.float16, "bf16": torch.bfloat16}[p]) for p in precisions}
    runs = {}
    for precision in precisions:
        for mode in MODES:
            click.echo(f"{precision} {mode} ...", err=True)
            runs[f"{precision}_{mode}"] = run_config(shards[mode], precision, device, s.steps, s.warmup, s.batch_size,
                                                     peak=peaks[precision])
    results = {"started": started.isoformat(timespec="seconds"), "machine": common.machine(),
               "versions": common.versions(), "load_average": {"start": None, "end": common.load_average()},
               "settings": {k: str(v) for k, v in dataclasses.asdict(s).items()},
               "sections": {"gpu": {"peaks_flops": peaks, "runs": runs}}, "figures": figures(runs, peaks),
               "skipped": {}, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "seconds": time.perf_counter() - clock0}
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(report.figures_table(results["figures"]) + f"\n\n{s.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

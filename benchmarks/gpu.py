"""Section 5, GPU: gpt2-124m, max-length 1024, batch 16, fp16 and bf16, padding vs concat.

    python -m benchmarks.gpu          # make bench-gpu; writes benchmarks/results-gpu.json
    # without a CUDA device it prints one line saying so and exits 0 (it never runs in CI)

For each precision and layout: tokens/s, supervised tokens/s, model-FLOPs utilisation against
the measured matmul peak of that precision, and the step split into data (drawing and collating
the batch from the memory-mapped shards, copying it to the device) and compute (forward,
backward, optimizer). The shards are prep's, from the embedded sample repeated `--copies` times.

Model FLOPs count useful work only, as PaLM (appendix B) and nanoGPT's `estimate_mfu` do:
6 per matmul parameter per real token, plus attention, 12 * n_layer * d_model per token per
token of its context, the full square rather than the causal half. With isolation a token's
context is its own sample (its segment), so a row of segments s_1..s_k costs
6 N sum(s_i) + 12 L d sum(s_i^2); padding costs nothing (the device computes it, nobody uses it).
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import click
import numpy as np

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp16", "bf16")
MODES = ("padding", "concat")


def matmul_parameters(model) -> int:
    """Parameters that enter a matmul for every token: all but the position embeddings (the tied
    token embedding stays in: it is the LM head's weight).

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> import torch
    >>> with torch.device("meta"):
    ...     model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=12, n_head=12, n_embd=768))
    >>> matmul_parameters(model)  # nanoGPT's 'number of parameters: 123.65M'
    123653376
    """
    total = sum(p.numel() for p in model.parameters())
    positions = getattr(getattr(model, "transformer", None), "wpe", None)
    return total - (positions.weight.numel() if positions is not None else 0)


def flops_per_token(n_params: int, n_layer: int, d_model: int, context: int) -> float:
    """Training FLOPs of one token whose context (its sample) is `context` tokens.

    >>> flops_per_token(123_653_376, 12, 768, 1024) / 1e9  # nanoGPT: 6N + 12*L*H*Q*T
    0.855166464
    """
    return 6.0 * n_params + 12.0 * n_layer * d_model * context


def model_flops(n_params: int, n_layer: int, d_model: int, segment_lengths) -> float:
    """Training FLOPs of a batch whose rows hold samples (segments) of these lengths.

    >>> model_flops(10, 2, 4, [3, 1]) == 3 * flops_per_token(10, 2, 4, 3) + flops_per_token(10, 2, 4, 1)
    True
    """
    s = np.asarray(segment_lengths, dtype=np.float64)
    return float(6.0 * n_params * s.sum() + 12.0 * n_layer * d_model * (s * s).sum())


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak_flops(device, dtype, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a size x size matmul in `dtype`, the best of `repeats` after warm-up: the peak MFU divides by."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def run_config(shards: Path, precision: str, device, steps: int, warmup: int, batch_size: int = 16,
               model_name: str = "gpt2-124m", peak: float | None = None, seed: int = 0) -> dict:
    """Train `steps` timed steps (after `warmup`) on these shards; medians of the per-step figures."""
    import torch
    from transformers import AutoTokenizer

    from benchmarks.common import median, optimizer_for, train_step
    from shards.format import ShardSet
    from shards.batch import gather_rows
    from train.data import RowOrder
    from train.loop import get_batch, resolve_precision
    from train.model import load_model

    shard_set = ShardSet.open(shards)
    split = shard_set.split("train")
    tok = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
    model = load_model(model_name, tok, pad_vocab_to=64, seed=seed).to(device)
    model.train()
    n_params, n_layer, d_model = matmul_parameters(model), model.config.n_layer, model.config.n_embd
    optimizer = optimizer_for(model)
    dtype, use_scaler = resolve_precision(precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    order = RowOrder(split.num_rows, batch_size, seed=seed, shuffle=True)
    pad = shard_set.manifest.pad_token_id
    records = []
    for i in range(warmup + steps):
        rows = order.next_rows()
        synchronize(device)
        start = time.perf_counter()
        inputs, batch = get_batch(split, rows, pad, True, device)
        synchronize(device)
        loaded = time.perf_counter()
        loss = train_step(model, optimizer, inputs, batch.supervised_tokens, autocast, scaler)
        done = time.perf_counter()  # train_step's .item() waited for the device
        if i < warmup:
            continue
        segments = np.concatenate([np.asarray(s) for s in gather_rows(split, rows)[2]])
        seconds = done - start
        records.append(dict(seconds=seconds, data=loaded - start, compute=done - loaded, tokens=batch.tokens,
                            supervised=batch.supervised_tokens, slots=batch.slots,
                            flops=model_flops(n_params, n_layer, d_model, segments),
                            loss=loss / max(batch.supervised_tokens, 1)))
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result = {
        "shards": str(shards), "precision": precision, "model": model_name, "batch_size": batch_size,
        "steps": steps, "matmul_parameters": n_params,
        "tokens_per_second": median(r["tokens"] / r["seconds"] for r in records),
        "supervised_tokens_per_second": median(r["supervised"] / r["seconds"] for r in records),
        "step_seconds": median(r["seconds"] for r in records),
        "data_seconds": median(r["data"] for r in records),
        "compute_seconds": median(r["compute"] for r in records),
        "padding_fraction": 1 - sum(r["tokens"] for r in records) / sum(r["slots"] for r in records),
        "model_flops_per_second": median(r["flops"] / r["seconds"] for r in records),
        "final_loss": records[-1]["loss"],
    }
    result["data_fraction"] = result["data_seconds"] / result["step_seconds"]
    result["mfu"] = result["model_flops_per_second"] / peak if peak else None
    return result


def figures(runs: dict, peaks: dict) -> list[dict]:
    from benchmarks.report import figure

    found = [figure("gpu", f"matmul_peak_tflops_{p}", peaks[p] / 1e12, "TFLOP/s") for p in peaks]
    for key, r in runs.items():
        found += [
            figure("gpu", f"{key}_tokens_per_second", r["tokens_per_second"], "tokens/s"),
            figure("gpu", f"{key}_supervised_tokens_per_second", r["supervised_tokens_per_second"], "tokens/s"),
            figure("gpu", f"{key}_mfu", r["mfu"]),
            figure("gpu", f"{key}_step_ms", r["step_seconds"] * 1000, "ms"),
            figure("gpu", f"{key}_data_ms", r["data_seconds"] * 1000, "ms"),
            figure("gpu", f"{key}_compute_ms", r["compute_seconds"] * 1000, "ms"),
        ]
    for precision in PRECISIONS:
        a, b = runs.get(f"{precision}_concat"), runs.get(f"{precision}_padding")
        if a and b:
            found.append(figure("gpu", f"{precision}_concat_over_padding",
                                a["supervised_tokens_per_second"] / b["supervised_tokens_per_second"]))
    return found


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=HERE / "results-gpu.json",
              show_default=True, help="where the results JSON goes")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=HERE / "work" / "gpu",
              show_default=True, help="folder for the shard sets")
@click.option("--copies", default=10, show_default=True, help="times the embedded sample is repeated for the shards")
@click.option("--steps", default=30, show_default=True, help="timed steps per precision and layout")
@click.option("--warmup", default=5, show_default=True, help="untimed steps before them")
@click.option("--max-length", default=1024, show_default=True, help="prep --max-length of the shards")
@click.option("--batch-size", default=16, show_default=True, help="rows per step")
def main(out: Path, work: Path, copies: int, steps: int, warmup: int, max_length: int, batch_size: int) -> None:
    """Measure gpt2-124m training throughput and MFU on a CUDA device (see benchmarks/gpu.py)."""
    import torch

    if not torch.cuda.is_available():
        click.echo("benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    import datetime

    from benchmarks import common, report
    from prep.config import PrepConfig
    from prep.pipeline import run

    started, clock0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    device = torch.device("cuda")
    data = common.write_copies(work / f"sample-x{copies}.jsonl", common.sample_records(), copies)
    shards = {}
    for mode in MODES:
        shards[mode] = work / f"{mode}-{max_length}"
        run(PrepConfig(data=str(data), out=str(shards[mode]), mode=mode, max_length=max_length), progress=False)
    precisions = [p for p in PRECISIONS if p != "bf16" or torch.cuda.is_bf16_supported()]
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    peaks = {p: measured_peak_flops(device, dtypes[p]) for p in precisions}
    runs = {}
    for precision in precisions:
        for mode in MODES:
            click.echo(f"{precision} {mode} ...", err=True)
            runs[f"{precision}_{mode}"] = run_config(shards[mode], precision, device, steps, warmup, batch_size,
                                                     peak=peaks[precision])
    results = {
        "started": started.isoformat(timespec="seconds"), "machine": common.machine(), "versions": common.versions(),
        "load_average": {"start": None, "end": common.load_average()},
        "settings": {"copies": copies, "steps": steps, "warmup": warmup, "max_length": max_length,
                     "batch_size": batch_size, "model": "gpt2-124m"},
        "sections": {"gpu": {"peaks_flops": peaks, "runs": runs}},
        "figures": figures(runs, peaks), "skipped": {},
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - clock0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(report.table(results["figures"]))
    click.echo(f"\n{out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

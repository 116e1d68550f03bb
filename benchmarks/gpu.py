"""`python -m benchmarks.gpu` (`make bench-gpu`): gpt2-124m at 16 x 1024, fp16, on a CUDA device -> results-gpu.json.

Without a CUDA device it prints one line saying so and exits 0. Each configuration of layout x attention
x --compile x --flatten that can run (a refused one is listed with its reason), and each layout under
`--fsdp` (`*_flash_fsdp`: `torchrun --nproc_per_node <every GPU>`, bf16, the batch rounded up to a
multiple of the GPUs), is one whole `python -m train` command, as a user runs it: --steps untimed steps (compiling included), then --steps timed ones,
read from the run's last train record (train.logs): tokens/s, supervised tokens/s, model TFLOP/s (the
same count whatever the kernel: train/flops.py), MFU against the device's datasheet peak (`mfu`) and
against its measured matmul peak (`mfu_measured_peak`), the share of the step spent waiting for the next
batch; and the run's peak memory (summary.json).
"""
from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import click
import torch

from benchmarks import common, report
from prep.packing import Mode
from sftcli import choices_of, click_options, opt
from train.attention import AttentionError, resolve_attention
from train.config import TrainConfig
from train.report import load_run
from train.step import resolve_precision

HERE = Path(__file__).resolve().parent
# The matrix: layout x --attention x --compile x --flatten, gpt2-124m at 16 x 1024 in fp16 (issue 14); the
# attention paths without `auto` (it is one of them) and `eager` (a reference no GPU user trains with).
MODES, SWITCHES = get_args(Mode), (False, True)
ATTENTIONS = tuple(a for a in choices_of(TrainConfig, "attention") if a not in ("auto", "eager"))
MODEL, BATCH_SIZE, MAX_LENGTH = "gpt2-124m", 16, 1024
TIMED = ("tokens_per_second", "supervised_tokens_per_second", "model_tflops", "mfu", "mfu_measured_peak",
         "data_wait_fraction", "loss")
PEAKS = ("peak_memory_gib", "matmul_peak_tflops", "datasheet_peak_tflops")  # from summary.json
FSDP_ATTENTION = "flash"  # the attention of the --fsdp configurations: what a GPU user trains with


@dataclass(frozen=True)
class GpuSettings:
    out: Path = opt(HERE / "results-gpu.json", "where the results JSON goes")
    work: Path = opt(HERE / "work" / "gpu", "folder for the shard sets and the runs")
    copies: int = opt(10, "times the embedded sample is repeated for the shards")
    steps: int = opt(10, "untimed steps (compiling included), then as many timed ones, per configuration")
    only: str = opt("", "comma-separated parts of configuration names to run, e.g. 'varlen,sdpa' or "
                        "'concat_varlen': what fits a short device lease [the whole matrix]")


def matrix(only: str = "") -> list[tuple[str, str, str, bool, bool, bool]]:
    """(name, layout, attention, compile, flatten, fsdp) of each configuration to run: the whole matrix, or those
    whose name contains one of `only`'s comma-separated parts. Under --fsdp (no --compile: it refuses it) each
    layout on `FSDP_ATTENTION`.

    >>> len(matrix()), [cell[0] for cell in matrix("concat_varlen_compile")], matrix("fsdp")[0]
    (51, ['concat_varlen_compile', 'concat_varlen_compile_flatten'], ('padding_flash_fsdp', 'padding', 'flash', False, False, True))
    """
    parts = [part.strip() for part in only.split(",") if part.strip()]
    cells = [(f"{mode}_{attention}" + "_compile" * compiled + "_flatten" * flat, mode, attention, compiled, flat,
              False)
             for mode in MODES for attention, compiled, flat in itertools.product(ATTENTIONS, SWITCHES, SWITCHES)]
    cells += [(f"{mode}_{FSDP_ATTENTION}_fsdp", mode, FSDP_ATTENTION, False, False, True) for mode in MODES]
    return [cell for cell in cells if not parts or any(part in cell[0] for part in parts)]


def train_command(shards: Path, out: Path, steps: int, *, batch_size: int, model: str, attention: str,
                  compile: bool, flatten: bool, precision: str, fsdp: int = 0) -> list[str]:  # noqa: A002
    """The `python -m train` command of one configuration: 2 x `steps` steps, the last `steps` logged as one
    window. `fsdp`: that many processes under torchrun with --fsdp, --batch-size rounded up to a multiple of them.

    >>> command = train_command(Path("s"), Path("o"), 5, batch_size=16, model="m", attention="flash", compile=False,
    ...                         flatten=False, precision="bf16", fsdp=3)
    >>> command[1:7], command[command.index("--batch-size") + 1], command[-1]
    (['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '3', '-m'], '18', '--fsdp')
    """
    launcher = ("torch.distributed.run", "--standalone", "--nproc_per_node", fsdp, "-m", "train") if fsdp \
        else ("train",)
    batch_size = -(-batch_size // fsdp) * fsdp if fsdp else batch_size
    return common.python_module(
        *launcher, "--shards", shards, "--out", out, "--model", model, "--batch-size", batch_size, "--dropout", 0,
        "--attention", attention, "--precision", precision, "--pad-vocab-to", 64, "--max-steps", 2 * steps,
        "--warmup-steps", steps, "--log-interval", steps, "--eval-interval", 2 * steps, "--no-progress",
        *["--compile"] * compile, *["--flatten"] * flatten, *["--fsdp"] * bool(fsdp))


def run_config(shards: Path, out: Path, steps: int, *, batch_size: int = BATCH_SIZE, model: str = MODEL,
               attention: str = "sdpa", compile: bool = False, flatten: bool = False,  # noqa: A002
               precision: str = "fp16", fsdp: int = 0) -> dict:
    """One `train_command` run; the figures of its last `steps`. Dropout is off in every configuration: flash and
    flex have none. The run folder is removed afterwards (a checkpoint is ~1.5 GB)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = resolve_precision(precision, device)[0]  # with --dropout 0, as the command below
    resolve_attention(attention, device, flatten=flatten, precision=autocast_dtype).check()  # refuses with its line
    shutil.rmtree(out, ignore_errors=True)
    command = train_command(shards, out, steps, batch_size=batch_size, model=model, attention=attention,
                            compile=compile, flatten=flatten, precision=precision, fsdp=fsdp)
    try:
        seconds = common.run_process(command)["seconds"]
        run = load_run(out)  # the report's reader of a run folder
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"command_seconds": seconds, **{k: run["train"][-1][k] for k in TIMED},
            **{k: run["summary"][k] for k in PEAKS}}


def figures(runs: dict) -> list[dict]:
    f, units = report.figure, {"supervised_tokens_per_second": "tokens/s", "mfu": "", "mfu_measured_peak": "",
                               "peak_memory_gib": "GiB", "data_wait_fraction": ""}
    peaks = [r["matmul_peak_tflops"] for r in runs.values() if r["matmul_peak_tflops"]]  # each run measures it
    found = [f("gpu", "matmul_peak_tflops_fp16", common.median(peaks) if peaks else None, "TFLOP/s")]
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
    s = GpuSettings(**options)
    results, runs, shards = common.new_results(s), {}, {}
    data = common.write_copies(s.work / f"sample-x{s.copies}.jsonl", common.sample_records(), s.copies)
    for key, mode, attention, compiled, flat, fsdp in matrix(s.only):
        if mode not in shards:
            shards[mode] = common.build_shards(data, s.work / f"{mode}-{MAX_LENGTH}", mode, MAX_LENGTH)
        click.echo(f"{key} ...", err=True)
        sharded = dict(fsdp=torch.cuda.device_count(), precision="bf16") if fsdp else {}  # --fsdp refuses fp16
        try:
            runs[key] = run_config(shards[mode], s.work / "run", s.steps, attention=attention, compile=compiled,
                                   flatten=flat, **sharded)
        except AttentionError as e:
            results["skipped"][key] = str(e)
    results["sections"]["gpu"], results["figures"] = {"runs": runs}, figures(runs)
    common.write_results(results, s.out)
    click.echo(report.figures_table(results["figures"]) + f"\n\n{s.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

"""The training loop. It reads top to bottom, like nanoGPT's train.py: `_train()` below.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # a tqdm bar (step, loss, tok/s); OUT/config.json, metrics.jsonl, tb/, best/, last/, summary.json

Beside it: `train.setup` (everything built before the first step: `build(config, dist) -> Run`),
`train.step` (draw, backward, update), `train.head` (the label-only head and
the one label shift), `train.attention` (the attention paths), `train.checkpoint`
(best/ and last/), `train.logs` (the Meter and its records), `train.flops` (model FLOPs and
MFU). `torchrun --nproc_per_node N -m train ...` runs the same loop under DistributedDataParallel.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed
from tqdm import tqdm

from sftcli import UserError
from train.checkpoint import prepare_out, save_checkpoint
from train.config import TrainConfig
from train.data import val_row_batches
from train.logs import Meter, Progress, RunLogger, write_json
from train.setup import Run, build
from train.step import Dist, Prefetcher, group_sizes, setup_distributed


class TrainError(UserError):
    """The run cannot go on (e.g. the loss stays NaN); checkpoints already written stay intact."""


@torch.no_grad()
def evaluate(run: Run) -> tuple:
    """Token-weighted mean loss over the whole val split (padding rows), the same rows in the same order each time."""
    config, dist = run.config, run.dist
    run.loss_model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    supervised = 0
    rows_per_process = max(1, (config.eval_batch_size or config.batch_size) // dist.world_size)
    for rows in val_row_batches(run.val_split, rows_per_process, dist.rank, dist.world_size):
        inputs, batch = run.batch(run.val_split, rows, isolation=True)
        with run.autocast():
            loss_sum += run.loss_model(**inputs).double()
        supervised += batch.supervised_tokens
    run.loss_model.train()
    total, supervised = dist.sum([loss_sum.item(), supervised], run.device)
    return total / max(supervised, 1), int(supervised)


def train(config: TrainConfig) -> dict:
    """Run (or resume) training; return the summary written to OUT/summary.json."""
    config.validate()
    dist = setup_distributed()
    try:
        return _train(config, dist)
    finally:
        if dist.world_size > 1:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, dist: Dist) -> dict:
    out = Path(config.out)
    prepare_out(out, config, dist)
    run = build(config, dist)  # ---- everything checked before the first step (train/setup.py)
    progress, model, tokenizer = run.progress, run.model, run.tokenizer
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_json())
    bar = tqdm(total=config.max_steps, initial=progress.step, disable=None if config.progress else True,
               dynamic_ncols=True) if dist.main else None
    meter = Meter(progress, RunLogger(out, dist.main, progress.step if config.resume else None), bar,
                  run.peak_flops and run.peak_flops * dist.world_size,
                  run.datasheet_flops and run.datasheet_flops * dist.world_size)
    prefetcher = Prefetcher(run.draw)  # the next step's batches are collated while this one runs
    try:
        run.loss_model.train()
        while progress.step < config.max_steps:
            t0 = time.perf_counter()
            # ---- draw
            batches, flops, (progress.epoch, progress.position) = prefetcher.next()
            data_seconds = time.perf_counter() - t0
            supervised, tokens, slots, flops = dist.sum([sum(b.supervised_tokens for _, b in batches),
                                                         sum(b.tokens for _, b in batches),
                                                         sum(b.slots for _, b in batches), flops], run.device)
            # ---- forward, backward, update
            loss_sum, lr, grad_norm, stepped, finite_loss = run.step(batches, supervised)
            meter.count(seconds=time.perf_counter() - t0, data_seconds=data_seconds, flops=flops, loss_sum=loss_sum,
                        supervised=int(supervised), tokens=int(tokens), slots=int(slots), stepped=stepped,
                        finite_loss=finite_loss)
            stop_if_diverged(progress, config, out)
            # ---- log
            stopping = progress.step in (config.max_steps, config.stop_after)
            if progress.step % config.log_interval == 0 or stopping:
                (window_loss,) = dist.sum([float(meter.loss)], run.device)  # the host reads the loss only here
                meter.log_train(window_loss, lr, grad_norm.item())
            # ---- evaluate, keep the best, save where to resume
            if progress.step % config.eval_interval == 0 or stopping:
                val_loss, val_supervised = evaluate(run)
                progress.last_val_loss = val_loss
                if math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss):
                    progress.best_val_loss, progress.best_step = val_loss, progress.step
                    if dist.main:
                        save_checkpoint(out / "best", model, tokenizer, progress, config)
                progress.wall_seconds = meter.elapsed()
                if math.isfinite(val_loss):  # never replace a good last/ by broken weights
                    save_checkpoint(out / "last", model, tokenizer, progress, config, optimizer=run.optimizer,
                                    scheduler=run.scheduler, scaler=run.scaler, dist=dist)
                meter.log_val(val_loss, val_supervised)
            if progress.step == config.stop_after:
                break
    finally:
        prefetcher.close()
        if bar is not None:
            bar.close()
    summary = meter.summary(config, run.shard_set.manifest, run.shard_set.folder, dist.world_size, run.attention.name,
                            group_sizes(run.optimizer))
    if dist.main:
        write_json(out / "summary.json", summary)
    meter.logger.close()
    return summary


def stop_if_diverged(progress: Progress, config: TrainConfig, out: Path) -> None:
    """More than --max-nan-steps NaN losses, or skipped updates, in a row end the run."""
    keep = (f"{out / 'last'} and {out / 'best'} hold the last good checkpoints: lower --learning-rate or use "
            f"--precision bf16/fp32, then --resume")
    if progress.consecutive_nan_steps > config.max_nan_steps:
        raise TrainError(f"the loss was NaN/inf for {progress.consecutive_nan_steps} consecutive steps (up to step "
                         f"{progress.step}; --max-nan-steps {config.max_nan_steps}); {keep}")
    if progress.consecutive_skipped_steps > config.max_nan_steps:
        raise TrainError(f"the update was skipped (inf/NaN gradients) for {progress.consecutive_skipped_steps} "
                         f"consecutive steps (up to step {progress.step}; --max-nan-steps {config.max_nan_steps}); "
                         f"{keep}")

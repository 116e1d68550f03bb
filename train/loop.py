"""The training loop. It reads top to bottom, like nanoGPT's train.py: `_train()` below (the run folder, its
lock, the stop signals, the records), then `_loop()` (the steps).

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # a tqdm bar (step, loss, tok/s); OUT/config.json, metrics.jsonl, tb/, best/, last/, summary.json

Beside it: `train.setup` (everything built before the first step: `build(config, dist) -> Run`),
`train.step` (draw, backward, update), `train.head` (the label-only head and
the one label shift), `train.attention` (the attention paths), `train.checkpoint`
(best/ and last/, the run folder's lock), `train.logs` (the Meter and its records), `train.flops` (model
FLOPs and MFU), `train.signals` (SIGTERM, SIGINT, SIGUSR1: save last/ and stop). `torchrun --nproc_per_node N -m train ...` runs the same loop under DistributedDataParallel.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.distributed
from tqdm import tqdm

from sftcli import UserError
from shards.folders import on_disk_full
from train.checkpoint import barrier, checkpoint_bytes, lock_run_folder, prepare_out, save_checkpoint
from train.config import TrainConfig, resume_command
from train.data import val_row_batches
from train.fsdp import equal_val_batches, full_state_dict, rank_bytes
from train.logs import Meter, Progress, RunLogger, write_json
from train.setup import Run, build
from train.signals import StopSignals
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
    batches = val_row_batches(run.val_split, rows_per_process, dist.rank, dist.world_size)
    own = equal_val_batches(batches, dist.world_size, run.device) if run.sharded else len(batches)
    for i, rows in enumerate(batches):
        inputs, batch = run.batch(run.val_split, rows, isolation=True)
        with run.autocast():
            loss = run.loss_model(**inputs).double()
        if i < own:  # beyond: a repeat that only keeps this process in step with the others' gathers
            loss_sum += loss
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
    with lock_run_folder(out, dist), StopSignals() as stop:  # one writer per run folder; SIGTERM saves and stops
        checkpoint = prepare_out(out, config, dist)
        # ---- everything checked before the first step (train/setup.py); --resume without a checkpoint: step 0
        run = build(config if checkpoint else dataclasses.replace(config, resume=False), dist)
        writes = Writes(resume_command(config))
        if dist.main:
            with writes(out):
                out.mkdir(parents=True, exist_ok=True)
                write_json(out / "config.json", config.to_json())
        bar = tqdm(total=config.max_steps, initial=run.progress.step, disable=None if config.progress else True,
                   dynamic_ncols=True) if dist.main else None
        with writes(out):
            logger = RunLogger(out, dist.main, run.progress.step if config.resume else None)
        meter = Meter(run.progress, logger, bar, run.peak_flops and run.peak_flops * dist.world_size,
                      run.datasheet_flops and run.datasheet_flops * dist.world_size)
        try:
            _loop(run, meter, stop, writes)
        finally:
            if bar is not None:
                bar.close()
        summary = meter.summary(config, run.shard_set.manifest, run.shard_set.folder, dist.world_size,
                                run.attention.name, group_sizes(run.optimizer), stopped=stop.name,
                                rank_memory_bytes=dist.gather(rank_bytes(run.model, run.optimizer)))
        if dist.main:
            with writes(out):
                write_json(out / "summary.json", summary)
                meter.logger.close()
            if summary["stopped"]:
                print(f"stopped by {stop.name} after step {run.progress.step}: {out / 'last'} holds it; continue "
                      f"with: {writes.resume}", flush=True)
        barrier(dist)  # no process exits (and ends the job under torchrun) before the main one has written
    return summary


def _loop(run: Run, meter: Meter, stop: StopSignals, writes: Writes) -> None:
    """The steps, from the run's progress to --max-steps, --stop-after or a stop signal."""
    config, dist, progress, out = run.config, run.dist, run.progress, Path(run.config.out)
    prefetcher = Prefetcher(run.draw)  # the next step's batches are collated while this one runs
    try:
        run.loss_model.train()
        while progress.step < config.max_steps:
            t0 = time.perf_counter()
            # ---- draw
            batches, flops, (progress.epoch, progress.position) = prefetcher.next()
            data_seconds = time.perf_counter() - t0
            supervised, tokens, slots, flops, *votes = dist.sum(
                [sum(b.supervised_tokens for _, b in batches), sum(b.tokens for _, b in batches),
                 sum(b.slots for _, b in batches), flops, *stop.votes()], run.device)
            # ---- forward, backward, update
            loss_sum, lr, grad_norm, stepped, finite_loss = run.step(batches, supervised)
            meter.count(seconds=time.perf_counter() - t0, data_seconds=data_seconds, flops=flops, loss_sum=loss_sum,
                        supervised=int(supervised), tokens=int(tokens), slots=int(slots), stepped=stepped,
                        finite_loss=finite_loss)
            stop_if_diverged(progress, config, out)
            signalled = stop.agreed(votes if dist.world_size > 1 else None)  # every process the same answer
            # ---- log
            stopping = progress.step in (config.max_steps, config.stop_after)
            if progress.step % config.log_interval == 0 or stopping or signalled:
                (window_loss,) = dist.sum([float(meter.loss)], run.device)  # the host reads the loss only here
                with writes(out):
                    meter.log_train(window_loss, lr, grad_norm.item())
            # ---- evaluate, keep the best, save where to resume (a signal: save at once)
            if progress.step % config.eval_interval == 0 or stopping:
                evaluate_and_save(run, meter, writes)
            elif signalled:
                progress.wall_seconds = meter.elapsed()
                save_last(run, writes)
            if progress.step == config.stop_after or signalled:
                break
    finally:
        prefetcher.close()


def evaluate_and_save(run: Run, meter: Meter, writes: Writes) -> None:
    """Evaluate; save best/ when the loss is the lowest so far, and last/."""
    progress, out = run.progress, Path(run.config.out)
    val_loss, val_supervised = evaluate(run)
    progress.last_val_loss = val_loss
    if math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss):
        progress.best_val_loss, progress.best_step = val_loss, progress.step
        weights = full_state_dict(run.model) if run.sharded else None  # every process sends its shards
        if run.dist.main:
            with writes(out / "best", checkpoint_bytes(out / "best", run.model)):
                save_checkpoint(out / "best", run.model, run.tokenizer, progress, run.config, state_dict=weights)
    progress.wall_seconds = meter.elapsed()
    if math.isfinite(val_loss):  # never replace a good last/ by broken weights
        save_last(run, writes)
    with writes(out):
        meter.log_val(val_loss, val_supervised)


def save_last(run: Run, writes: Writes) -> None:
    """Save all that --resume needs in last/ (every process takes part: the RNG states are gathered)."""
    out = Path(run.config.out)
    with writes(out / "last", checkpoint_bytes(out / "last", run.model, run.optimizer)):
        save_checkpoint(out / "last", run.model, run.tokenizer, run.progress, run.config, optimizer=run.optimizer,
                        scheduler=run.scheduler, scaler=run.scaler, dist=run.dist)


class Writes:
    """`with writes(folder, need):` a full disk while writing `folder` stops the run with one line that names
    it, the space needed and the command that continues the run; what was saved before is intact."""

    def __init__(self, resume: str):
        self.resume = resume

    def __call__(self, folder: Path, need: int | None = None):
        return on_disk_full(folder, f"free some space, then continue with: {self.resume}", need)


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

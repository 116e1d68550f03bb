"""The training loop. It reads top to bottom, like nanoGPT's train.py: `_train()` below.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # a tqdm bar (step, loss, tok/s); OUT/config.json, metrics.jsonl, tb/, best/, last/, summary.json

Beside it: `train.step` (draw, backward, update), `train.head` (the label-only head and
the one label shift), `train.attention` (the attention paths), `train.checkpoint`
(best/ and last/), `train.logs` (the Meter and its records), `train.flops` (model FLOPs and
MFU). `torchrun --nproc_per_node N -m train ...` runs the same loop under DistributedDataParallel.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed
from tqdm import tqdm
import transformers
from transformers import AutoTokenizer

from shards.format import ShardError, ShardSet, SplitArrays, rebuild_hint
from train.attention import FLEX, TORCH_FLASH, AttentionError, attention_dropout, implementation, register_attention, resolve_attention
from train.checkpoint import load_checkpoint, prepare_out, save_checkpoint
from sftcli import ConfigError, UserError
from train.config import TrainConfig
from train.data import RowOrder, check_same_shards, check_shards, rank_share, val_row_batches
from train.flops import attended_squares, measured_peak_flops, parameter_counts, step_flops
from train.head import LabelLossModel
from train.logs import Meter, Progress, RunLogger, write_json
from train.model import load_model, max_positions, vocab_rows
from train.step import (COMPILE_WIDTH_MULTIPLE, Dist, Prefetcher, backward, get_batch, make_optimizer,
                        resolve_precision, setup_distributed, update)


class TrainError(UserError):
    """The run cannot go on (e.g. the loss stays NaN); checkpoints already written stay intact."""


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (the seed's schedule).

    >>> c = TrainConfig(shards=Path("s"), learning_rate=1.0, warmup_steps=10, max_steps=110)
    >>> [get_lr(s, c) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    return config.learning_rate * max(0.0, (config.max_steps - step) / max(1, config.max_steps - config.warmup_steps))


@torch.no_grad()
def evaluate(loss_model, split: SplitArrays, config: TrainConfig, dist: Dist, device, autocast, batch_options) -> tuple:
    """Token-weighted mean loss over the whole val split (padding rows), the same rows in the same order each time."""
    loss_model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    supervised = 0
    rows_per_process = max(1, (config.eval_batch_size or config.batch_size) // dist.world_size)
    for rows in val_row_batches(split, rows_per_process, dist.rank, dist.world_size):
        inputs, batch = get_batch(split, rows, isolation=True, device=device, **batch_options)
        with autocast():
            loss_sum += loss_model(**inputs).double()
        supervised += batch.supervised_tokens
    loss_model.train()
    total, supervised = dist.sum([loss_sum.item(), supervised], device)
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
    transformers.utils.logging.disable_progress_bar()  # its per-save bars would break ours
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    attention = resolve_attention(config.attention, device, training=True, isolation=config.isolation == "on",
                                  flatten=config.flatten)
    if dist.main and config.attention == "auto":
        print(f"--attention auto: {attention}", flush=True)
    register_attention()
    out = Path(config.out)
    prepare_out(out, config, dist)
    # ---- shards, tokenizer, model: all checked before the first step
    shard_set = ShardSet.open(config.shards, verify=config.verify)
    check_same_shards(shard_set, dist.rank, dist.world_size)
    manifest, hint = shard_set.manifest, rebuild_hint(shard_set.manifest)
    tokenizer = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
    model = load_model(str(out / "last") if config.resume else config.model, tokenizer, config.pad_vocab_to,
                       config.seed, config.dropout, implementation(attention), manifest.end_of_turn_token_id)
    check_shards(shard_set, vocab_rows(model))
    if implementation(attention) in (FLEX, TORCH_FLASH) and attention_dropout(model.config) > 0:
        raise AttentionError(f"--attention {attention}: its kernel has no attention dropout, and {config.model} uses "
                             f"{attention_dropout(model.config)}; pass --dropout 0, or use --attention varlen")
    width_multiple = COMPILE_WIDTH_MULTIPLE if config.compile else 1
    padded_length = -(-manifest.max_length // width_multiple) * width_multiple
    if (positions := max_positions(model)) is not None and padded_length > positions:
        raise ShardError(f"{shard_set.folder}: rows of up to {padded_length} tokens (max_length "
                         f"{manifest.max_length}{', padded for --compile' if config.compile else ''}), but the "
                         f"model has {positions} positions; {hint} and a smaller --max-length")
    train_split, val_split = shard_set.split("train"), shard_set.split("val")
    if config.batch_size % dist.world_size or train_split.num_rows < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {dist.world_size} "
                          f"processes and at most the {train_split.num_rows} train rows")
    model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 matmuls on tensor cores
    loss_model = LabelLossModel(model, compile=config.compile)
    autocast_dtype, use_scaler = resolve_precision(config.precision, device)
    if attention == "flash" and autocast_dtype is None:
        raise AttentionError("--attention flash: flash kernels compute in fp16/bf16 only; use --precision auto, "
                             "fp16 or bf16, or --attention varlen")
    autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()  # noqa: E731
    # MFU's denominator: the matmul peak measured here, in the step's precision (CUDA only: a fast check there)
    peak_flops = None
    if device.type == "cuda":
        peak_flops = measured_peak_flops(device, autocast_dtype or torch.float32)
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak memory is the run's, not the check's
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: get_lr(step, config) / config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    torch.manual_seed(config.seed + dist.rank)  # dropout
    progress = load_checkpoint(out / "last", optimizer, scheduler, scaler, dist) if config.resume else Progress()
    order = RowOrder(train_split.num_rows, config.batch_size, config.seed, config.shuffle,
                     progress.epoch, progress.position)
    ddp = loss_model if dist.world_size == 1 else torch.nn.parallel.DistributedDataParallel(
        loss_model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_json())
    bar = tqdm(total=config.max_steps, initial=progress.step, disable=None if config.progress else True,
               dynamic_ncols=True) if dist.main else None
    meter = Meter(progress, RunLogger(out, dist.main, progress.step if config.resume else None), bar,
                  peak_flops and peak_flops * dist.world_size)
    counts = parameter_counts(model)
    batch_options = dict(pad_token_id=manifest.pad_token_id, flatten=config.flatten,
                         pad_to_multiple_of=width_multiple, attention=attention)

    def draw_step():
        # All of a step's micro-batches at once: the loss is normalised by the supervised tokens
        # of the whole step, on all processes together.
        batches = [get_batch(train_split, rank_share(order.next_rows(), dist.rank, dist.world_size),
                             isolation=config.isolation == "on", device=device, pin=device.type == "cuda",
                             **batch_options) for _ in range(config.grad_accum)]
        flops = sum(step_flops(counts, model.config, batch.tokens, batch.supervised_tokens,
                               attended_squares(inputs, batch, attention)) for inputs, batch in batches)
        return batches, flops, (order.epoch, order.position)

    prefetcher = Prefetcher(draw_step)
    try:
        loss_model.train()
        while progress.step < config.max_steps:
            t0 = time.perf_counter()
            # ---- draw
            batches, flops, (progress.epoch, progress.position) = prefetcher.next()
            data_seconds = time.perf_counter() - t0
            supervised, tokens, slots, flops = dist.sum([sum(b.supervised_tokens for _, b in batches),
                                                         sum(b.tokens for _, b in batches),
                                                         sum(b.slots for _, b in batches), flops], device)
            # ---- forward/backward. DDP averages gradients over processes; times world_size makes the sum over all.
            loss_sum = backward(ddp, loss_model, batches, dist.world_size / max(supervised, 1), autocast, scaler)
            # ---- update; a skipped update leaves the schedule where it was (as Hugging Face's Trainer)
            lr = scheduler.get_last_lr()[0]
            grad_norm, stepped, finite_loss = update(model, optimizer, scaler, config.grad_clip,
                                                     torch.isfinite(loss_sum))
            if stepped:
                scheduler.step()
            meter.count(time.perf_counter() - t0, data_seconds, flops, loss_sum, int(supervised), int(tokens),
                        int(slots), stepped, finite_loss)
            stop_if_diverged(progress, config, out)
            # ---- log
            stopping = progress.step in (config.max_steps, config.stop_after)
            if progress.step % config.log_interval == 0 or stopping:
                (window_loss,) = dist.sum([float(meter.loss)], device)  # the host reads the loss only here
                meter.log_train(window_loss, lr, grad_norm.item())
            # ---- evaluate, keep the best, save where to resume
            if progress.step % config.eval_interval == 0 or stopping:
                val_loss, val_supervised = evaluate(loss_model, val_split, config, dist, device, autocast,
                                                    batch_options)
                progress.last_val_loss = val_loss
                if math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss):
                    progress.best_val_loss, progress.best_step = val_loss, progress.step
                    if dist.main:
                        save_checkpoint(out / "best", model, tokenizer, progress, config)
                progress.wall_seconds = meter.elapsed()
                if math.isfinite(val_loss):  # never replace a good last/ by broken weights
                    save_checkpoint(out / "last", model, tokenizer, progress, config, optimizer, scheduler, scaler,
                                    dist)
                meter.log_val(val_loss, val_supervised)
            if progress.step == config.stop_after:
                break
    finally:
        prefetcher.close()
        if bar is not None:
            bar.close()
    summary = meter.summary(config, manifest, shard_set.folder, dist.world_size, attention)
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

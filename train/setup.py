"""Everything a run needs before its first step, built in one place: `build(config, dist) -> Run`.

    run = build(config, dist)              # device, attention plan, shards, tokenizer, model, optimizer, ...
    batches, flops, place = run.draw()     # one optimizer step's micro-batches
    loss_sum, lr, grad_norm, stepped, finite_loss = run.step(batches, supervised)

`python -m train` (train/loop.py) and the benchmarks (benchmarks/common.py) both build through
`build`, so a benchmark measures what the loop runs. Every check that can refuse the run
(attention path, shards against the model, batch size) runs here, before the first step.
DistributedDataParallel is a choice made here (`Run.ddp`), not a copy of the set-up.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from shards.format import ShardError, ShardSet, SplitArrays, rebuild_hint
from sftcli import ConfigError
from train.attention import AttentionPlan, attention_dropout, register_attention, resolve_attention
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.data import RowOrder, check_same_shards, check_shards, rank_share
from train.fsdp import (checkpoint_blocks, fsdp_precision, is_sharded_checkpoint, shard, spread_weights,
                        start_weights)
from train.flops import attended_squares, datasheet_peak_flops, measured_peak_flops, parameter_counts, step_flops
from train.head import LabelLossModel
from train.logs import Progress
from train.model import empty_model, load_model, max_positions, model_config, vocab_rows
from train.step import (COMPILE_WIDTH_MULTIPLE, Dist, backward, get_batch, make_optimizer, resolve_precision,
                        update)


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (the source article's schedule).

    >>> c = TrainConfig(shards=Path("s"), learning_rate=1.0, warmup_steps=10, max_steps=110)
    >>> [get_lr(s, c) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    return config.learning_rate * max(0.0, (config.max_steps - step) / max(1, config.max_steps - config.warmup_steps))


@dataclass
class Run:
    """A built run: what `build` made, and the two things done with it every step (`draw`, `step`)."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    attention: AttentionPlan
    shard_set: ShardSet
    train_split: SplitArrays
    val_split: SplitArrays
    tokenizer: object
    model: torch.nn.Module  # the Hugging Face model (saved in checkpoints)
    loss_model: LabelLossModel  # the model and the label-only head: what the step calls
    ddp: torch.nn.Module  # loss_model, or its DistributedDataParallel wrapper
    autocast: object  # () -> the step's autocast context
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress  # where the run is: new, or restored by --resume
    order: RowOrder
    batch_options: dict  # get_batch's keywords shared by train and val batches
    counts: tuple[int, int]  # parameter counts (train.flops)
    peak_flops: float | None  # one device's measured matmul peak (CUDA only): mfu_measured_peak's denominator
    datasheet_flops: float | None  # one device's datasheet peak in the step's precision (known GPUs): mfu's

    @property
    def sharded(self) -> bool:
        """Whether the parameters are sharded over the processes (--fsdp under torchrun)."""
        return self.config.fsdp and self.dist.world_size > 1

    def batch(self, split: SplitArrays, rows, isolation: bool | None = None, pin: bool = False):
        """(model inputs, Batch) of these rows of `split` (isolation: the run's unless given)."""
        isolation = self.config.isolation == "on" if isolation is None else isolation
        return get_batch(split, rows, isolation=isolation, device=self.device, pin=pin, **self.batch_options)

    def draw(self):
        """All of a step's micro-batches at once: the loss is normalised by the supervised tokens of the
        whole step, on all processes together. Returns (batches, model FLOPs, (epoch, position) after them)."""
        batches = [self.batch(self.train_split, rank_share(self.order.next_rows(), self.dist.rank,
                                                           self.dist.world_size), pin=self.device.type == "cuda")
                   for _ in range(self.config.grad_accum)]
        flops = sum(step_flops(self.counts, self.model.config, batch.tokens, batch.supervised_tokens,
                               attended_squares(batch)) for _, batch in batches)
        return batches, flops, (self.order.epoch, self.order.position)

    def step(self, batches: list, supervised: float) -> tuple:
        """Forward, backward and update over a step's micro-batches, `supervised` tokens on all processes.

        Returns (loss sum on the device, the step's learning rate, grad norm, stepped, finite loss).
        DDP averages gradients over processes; times world_size makes the sum over all. A skipped
        update leaves the schedule where it was (as Hugging Face's Trainer).
        """
        loss_sum = backward(self.ddp, self.loss_model, batches, loss_scale=self.dist.world_size / max(supervised, 1),
                            autocast=self.autocast, scaler=self.scaler)
        lr = self.scheduler.get_last_lr()[0]
        grad_norm, stepped, finite_loss = update(self.model, self.optimizer, self.scaler, self.config.grad_clip,
                                                 torch.isfinite(loss_sum))
        if stepped:
            self.scheduler.step()
        return loss_sum, lr, grad_norm, stepped, finite_loss


def build(config: TrainConfig, dist: Dist, device: torch.device | None = None) -> Run:
    """Device, attention, shards, tokenizer, model, optimizer, schedule, resume state, row order; every
    check before the first step. `device`: CUDA (this process's) where there is one, else the CPU."""
    transformers.utils.logging.disable_progress_bar()  # its per-save bars would break the loop's
    device = device or torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    autocast_dtype, use_scaler = resolve_precision(fsdp_precision(config.precision, device) if config.fsdp
                                                   else config.precision, device)
    last = Path(config.out) / "last"  # a sharded last/ holds no weights for from_pretrained: they load after sharding
    name = str(last) if config.resume and not is_sharded_checkpoint(last) else config.model
    attention = resolve_attention(config.attention, device, training=True, isolation=config.isolation == "on",
                                  flatten=config.flatten, precision=autocast_dtype,
                                  dropout=attention_dropout(model_config(name, config.dropout))).check()
    if dist.main and config.attention == "auto":
        print(f"--attention auto: {attention.name}", flush=True)
    register_attention()
    shard_set, tokenizer, model = _open_shards_and_model(config, dist, name, attention)
    train_split, val_split = shard_set.split("train"), shard_set.split("val")
    if config.batch_size % dist.world_size or train_split.num_rows < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {dist.world_size} "
                          f"processes and at most the {train_split.num_rows} train rows")
    if not (config.fsdp and dist.world_size > 1):  # sharding moves each unit's shards to the device itself
        model.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 matmuls on tensor cores
    loss_model, ddp = _wrap(model, config, dist, device, autocast_dtype)
    autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()  # noqa: E731
    peak_flops = datasheet_flops = None
    if device.type == "cuda":  # MFU's denominators: the datasheet's peak, and the matmul peak measured here
        datasheet_flops = datasheet_peak_flops(torch.cuda.get_device_name(device), autocast_dtype)
        peak_flops = measured_peak_flops(device, autocast_dtype or torch.float32)
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak memory is the run's, not the check's
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: get_lr(step, config) / config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    torch.manual_seed(config.seed + dist.rank)  # dropout
    progress = (load_checkpoint(Path(config.out) / "last", model, optimizer, scheduler, scaler, dist) if config.resume
                else Progress())
    order = RowOrder(train_split.num_rows, config.batch_size, seed=config.seed, shuffle=config.shuffle,
                     epoch=progress.epoch, position=progress.position,
                     lengths=train_split.row_lengths() if config.group_by_length else None)
    batch_options = dict(pad_token_id=shard_set.manifest.pad_token_id, flatten=config.flatten,
                         pad_to_multiple_of=COMPILE_WIDTH_MULTIPLE if config.compile else 1, attention=attention)
    return Run(config, dist, device, attention, shard_set, train_split, val_split, tokenizer, model, loss_model, ddp,
               autocast, optimizer, scheduler, scaler, progress, order, batch_options, parameter_counts(model),
               peak_flops, datasheet_flops)


def _wrap(model, config: TrainConfig, dist: Dist, device: torch.device, autocast_dtype) -> tuple:
    """(the LabelLossModel, what the step calls: it, its DDP wrapper, or it sharded in place by --fsdp).

    Activation checkpointing goes on the blocks first, then sharding (the optimizer is made after, over
    the shards). With one process there is nothing to shard to or synchronise with.
    """
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    loss_model = LabelLossModel(model, compile=config.compile)
    if dist.world_size == 1:
        return loss_model, loss_model
    if config.fsdp:
        weights = start_weights(model, dist)
        shard(loss_model, model, autocast_dtype, device)
        spread_weights(loss_model, model, weights, device)
        return loss_model, loss_model
    return loss_model, torch.nn.parallel.DistributedDataParallel(
        loss_model, device_ids=[dist.local_rank] if device.type == "cuda" else None)


def _open_shards_and_model(config: TrainConfig, dist: Dist, name: str, attention: AttentionPlan) -> tuple:
    """The shard set, its tokenizer and the model, checked against each other."""
    shard_set = ShardSet.open(config.shards, verify=config.verify)
    check_same_shards(shard_set, dist.rank, dist.world_size)
    manifest = shard_set.manifest
    tokenizer = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
    empty = config.fsdp and dist.world_size > 1 and not dist.main  # rank 0's weights arrive after sharding
    model = (empty_model if empty else load_model)(
        name, tokenizer, pad_vocab_to=config.pad_vocab_to, seed=config.seed, dropout=config.dropout,
        attention=attention.implementation, end_of_turn_token_id=manifest.end_of_turn_token_id)
    check_shards(shard_set, vocab_rows(model))
    width_multiple = COMPILE_WIDTH_MULTIPLE if config.compile else 1
    padded_length = -(-manifest.max_length // width_multiple) * width_multiple
    if (positions := max_positions(model)) is not None and padded_length > positions:
        raise ShardError(f"{shard_set.folder}: rows of up to {padded_length} tokens (max_length "
                         f"{manifest.max_length}{', padded for --compile' if config.compile else ''}), but the "
                         f"model has {positions} positions; {rebuild_hint(manifest)} and a smaller --max-length")
    return shard_set, tokenizer, model

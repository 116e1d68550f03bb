"""The training loop. It reads top to bottom, like nanoGPT's train.py: `train()` below.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # a tqdm bar (step, loss, tok/s); OUT/config.json, metrics.jsonl, tb/, best/, last/, summary.json

`torchrun --nproc_per_node N -m train ...` runs the same loop under DistributedDataParallel.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed
import torch.nn.functional as F
from tqdm import tqdm
import transformers
from transformers import AutoTokenizer

from shards.format import (IGNORE_INDEX, MANIFEST, Manifest, ShardError, ShardSet, SplitArrays, rebuild_hint,
                           recover_folder, staged_folder)
from train.config import TrainConfig, load_config
from shards.batch import get_rows_batch
from train.data import RowOrder, check_same_shards, check_shards, rank_share, val_row_batches
from train.logs import RunLogger, write_json
from train.model import load_model, max_positions, vocab_rows
from sftcli import ConfigError, UserError

TRAINER_STATE = "trainer_state.json"  # Progress + config: the counters a resume restores
OPTIMIZER_STATE = "optimizer.pt"  # optimizer, scheduler, GradScaler, per-process RNG states


class TrainError(UserError):
    """The run cannot go on (e.g. the loss stays NaN); checkpoints already written stay intact."""


@dataclass
class Progress:
    """Everything about where a run is that is not a tensor; saved in last/trainer_state.json."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data order: epoch of the permutation ...
    position: int = 0  # ... and micro-batches already drawn from it
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val_loss: float | None = None
    tokens: int = 0  # real tokens trained on (all processes)
    supervised_tokens: int = 0
    slots: int = 0  # positions computed, padding included
    train_seconds: float = 0.0  # time in steps, without evaluation and saving
    wall_seconds: float = 0.0
    overflow_skipped_steps: int = 0  # updates skipped because gradients were inf/NaN
    nan_loss_steps: int = 0
    consecutive_nan_steps: int = 0


@dataclass
class Dist:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()


def setup_distributed() -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
    torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler runs).

    >>> resolve_precision("auto", torch.device("cpu")), resolve_precision("bf16", torch.device("cpu"))
    ((None, False), (torch.bfloat16, False))
    """
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"  # the seed's choice on GPU
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at max_steps (the seed's schedule).

    >>> c = TrainConfig(shards=Path("s"), learning_rate=1.0, warmup_steps=10, max_steps=110)
    >>> [get_lr(s, c) for s in (0, 5, 10, 60, 110)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    return config.learning_rate * max(0.0, (config.max_steps - step) / max(1, config.max_steps - config.warmup_steps))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy, fp32, shape (rows, length): entry t is the loss of predicting token t+1.

    THE label shift: the only place where the logits at t meet the label at t+1
    (labels arrive unshifted from `shards.batch.collate`; the model is never given
    labels). Ignored labels give 0. Summed, then divided by the supervised tokens
    of the whole optimizer step, so micro-batches and processes weigh by tokens.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
    return losses.view(labels.shape)


def forward(model, inputs: dict) -> torch.Tensor:
    """Logits of a collated batch. No attention mask, and no cache: transformers then reads
    a new sequence wherever the position ids restart and blocks attention across it
    (with a cache, or with a 2-D mask, it would not look at the positions at all)."""
    return model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits


def backward(ddp, model, batches: list, loss_scale: float, autocast, scaler) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches; returns their summed token loss.

    Each micro-batch's summed loss is multiplied by `loss_scale` (1 / the step's supervised
    tokens), so the gradients are of the token-weighted mean over the whole step. DDP
    all-reduces once, on the last micro-batch.
    """
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    for micro, (inputs, _) in enumerate(batches):
        last_micro = micro == len(batches) - 1
        with nullcontext() if last_micro or ddp is model else ddp.no_sync():
            with autocast():
                logits = forward(ddp, inputs)
            micro_loss = token_losses(logits, inputs["labels"]).sum()
            scaler.scale(micro_loss * loss_scale).backward()
        loss_sum += micro_loss.detach()
    return loss_sum


def update(model, optimizer, scaler, grad_clip: float, finite_loss: bool) -> tuple[float, bool]:
    """Unscale, clip and step; an update with inf/NaN gradients or loss is skipped. Returns (grad norm, stepped)."""
    scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf).item()
    stepped = finite_loss and math.isfinite(grad_norm)
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the update itself when the gradients hold inf/NaN
    elif stepped:
        optimizer.step()
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped


def get_batch(split: SplitArrays, rows: np.ndarray, pad_token_id: int, isolation: bool, device: torch.device):
    """Collate rows of the memory-mapped split; return model inputs, labels and the batch's counts."""
    batch = get_rows_batch(split, rows, pad_token_id, isolation)
    tensors = {k: torch.from_numpy(getattr(batch, k)).to(device, non_blocking=True)
               for k in ("input_ids", "position_ids", "labels")}
    return tensors, batch


@torch.no_grad()
def evaluate(model, split: SplitArrays, config: TrainConfig, dist: Dist, device, autocast, pad_token_id) -> tuple:
    """Token-weighted mean loss over the whole val split (padding rows), the same rows in the same order each time."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    supervised = 0
    for rows in val_row_batches(split, config.batch_size // dist.world_size, dist.rank, dist.world_size):
        inputs, batch = get_batch(split, rows, pad_token_id, isolation=True, device=device)
        with autocast():
            logits = forward(model, inputs)
        loss_sum += token_losses(logits, inputs["labels"]).sum(dtype=torch.float64)
        supervised += batch.supervised_tokens
    model.train()
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
    started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()  # its per-save bars would break ours
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    prepare_out(out, config, dist)
    # ---- shards, tokenizer, model: all checked before the first step
    shard_set = ShardSet.open(config.shards, verify=config.verify)
    check_same_shards(shard_set, dist.rank, dist.world_size)
    manifest, hint = shard_set.manifest, rebuild_hint(shard_set.manifest)
    tokenizer = AutoTokenizer.from_pretrained(str(shard_set.tokenizer_dir))
    model = load_model(str(out / "last") if config.resume else config.model, tokenizer, config.pad_vocab_to,
                       config.seed, config.dropout, config.attention)
    check_shards(shard_set, vocab_rows(model))
    if (positions := max_positions(model)) is not None and manifest.max_length > positions:
        raise ShardError(f"{shard_set.folder}: rows of up to {manifest.max_length} tokens, but the model "
                         f"has {positions} positions; {hint} and a smaller --max-length")
    train_split, val_split = shard_set.split("train"), shard_set.split("val")
    if config.batch_size % dist.world_size or train_split.num_rows < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {dist.world_size} "
                          f"processes and at most the {train_split.num_rows} train rows")
    pad_token_id, isolation = manifest.pad_token_id, config.isolation == "on"
    model.to(device)
    autocast_dtype, use_scaler = resolve_precision(config.precision, device)
    autocast = lambda: torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, eps=config.adam_eps,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: get_lr(step, config) / config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    torch.manual_seed(config.seed + dist.rank)  # dropout
    progress = load_checkpoint(out / "last", optimizer, scheduler, scaler, dist) if config.resume else Progress()
    order = RowOrder(train_split.num_rows, config.batch_size, config.seed, config.shuffle,
                     progress.epoch, progress.position)
    ddp = model if dist.world_size == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config.to_json())
    logger = RunLogger(out, dist.main, progress.step if config.resume else None)
    bar = tqdm(total=config.max_steps, initial=progress.step, disable=None if config.progress else True,
               dynamic_ncols=True) if dist.main else None
    window = dict(loss=0.0, supervised=0, tokens=0, slots=0, seconds=0.0)
    wall_before = progress.wall_seconds

    model.train()
    while progress.step < config.max_steps:
        t0 = time.perf_counter()
        # ---- one optimizer step. Draw all its micro-batches first: the loss is normalised
        # by the supervised tokens of the whole step, on all processes together.
        batches = [get_batch(train_split, rank_share(order.next_rows(), dist.rank, dist.world_size),
                             pad_token_id, isolation, device) for _ in range(config.grad_accum)]
        (step_supervised,) = dist.sum([sum(b.supervised_tokens for _, b in batches)], device)
        # DDP averages gradients over processes; multiplying back by world_size makes the sum over all.
        loss_sum = backward(ddp, model, batches, dist.world_size / max(step_supervised, 1), autocast, scaler)
        lr = scheduler.get_last_lr()[0]
        step_loss, tokens, slots = dist.sum([loss_sum.item(), sum(b.tokens for _, b in batches),
                                            sum(b.slots for _, b in batches)], device)
        finite_loss = math.isfinite(step_loss)
        grad_norm, stepped = update(model, optimizer, scaler, config.grad_clip, finite_loss)
        scheduler.step()
        progress.step += 1
        progress.epoch, progress.position = order.epoch, order.position
        progress.overflow_skipped_steps += not stepped
        progress.nan_loss_steps += not finite_loss
        progress.consecutive_nan_steps = 0 if finite_loss else progress.consecutive_nan_steps + 1
        if progress.consecutive_nan_steps > config.max_nan_steps:
            raise TrainError(
                f"the loss was NaN/inf for {progress.consecutive_nan_steps} consecutive steps (up to step "
                f"{progress.step}; --max-nan-steps {config.max_nan_steps}); {out / 'last'} and {out / 'best'} hold "
                f"the last good checkpoints: lower --learning-rate or use --precision bf16/fp32, then --resume"
            )
        # ---- counters and logs
        seconds = time.perf_counter() - t0
        progress.train_seconds += seconds
        progress.tokens += int(tokens)
        progress.supervised_tokens += int(step_supervised)
        progress.slots += int(slots)
        for key, value in zip(("loss", "supervised", "tokens", "slots", "seconds"),
                              (step_loss, step_supervised, tokens, slots, seconds)):
            window[key] += value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss / max(step_supervised, 1):.4f}", tok_s=f"{tokens / seconds:.0f}")
        stopping = progress.step in (config.max_steps, config.stop_after)
        if progress.step % config.log_interval == 0 or stopping:
            logger.log(dict(
                kind="train", step=progress.step, epoch=progress.epoch, loss=window["loss"] / max(window["supervised"], 1),
                learning_rate=lr, grad_norm=grad_norm, tokens=progress.tokens, supervised_tokens=progress.supervised_tokens,
                tokens_per_second=window["tokens"] / window["seconds"],
                supervised_tokens_per_second=window["supervised"] / window["seconds"],
                padding_fraction=1 - window["tokens"] / window["slots"],
                overflow_skipped_steps=progress.overflow_skipped_steps, nan_loss_steps=progress.nan_loss_steps,
                elapsed_seconds=wall_before + time.perf_counter() - started,
            ))
            window = dict.fromkeys(window, 0)
        # ---- evaluate, keep the best, save where to resume
        if progress.step % config.eval_interval == 0 or stopping:
            val_loss, val_supervised = evaluate(model, val_split, config, dist, device, autocast, pad_token_id)
            progress.last_val_loss = val_loss
            if math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss):
                progress.best_val_loss, progress.best_step = val_loss, progress.step
                if dist.main:
                    save_checkpoint(out / "best", model, tokenizer, progress, config)
            progress.wall_seconds = wall_before + time.perf_counter() - started
            if math.isfinite(val_loss):  # never replace a good last/ by broken weights
                save_checkpoint(out / "last", model, tokenizer, progress, config, optimizer, scheduler, scaler, dist)
            logger.log(dict(kind="val", step=progress.step, epoch=progress.epoch, tokens=progress.tokens,
                            supervised_tokens=progress.supervised_tokens, val_loss=val_loss,
                            val_supervised_tokens=val_supervised, best_val_loss=progress.best_val_loss,
                            best_step=progress.best_step, elapsed_seconds=progress.wall_seconds))
        if progress.step == config.stop_after:
            break

    if bar is not None:
        bar.close()
    progress.wall_seconds = wall_before + time.perf_counter() - started
    summary = make_summary(progress, config, manifest, shard_set.folder, dist)
    if dist.main:
        write_json(out / "summary.json", summary)
    logger.close()
    return summary


def make_summary(progress: Progress, config: TrainConfig, manifest: Manifest, shards: Path, dist: Dist) -> dict:
    return dict(
        steps=progress.step, max_steps=config.max_steps, completed=progress.step == config.max_steps,
        epoch=progress.epoch, wall_seconds=progress.wall_seconds, train_seconds=progress.train_seconds,
        tokens=progress.tokens, supervised_tokens=progress.supervised_tokens,
        tokens_per_second=progress.tokens / max(progress.train_seconds, 1e-9),
        supervised_tokens_per_second=progress.supervised_tokens / max(progress.train_seconds, 1e-9),
        padding_fraction=1 - progress.tokens / max(progress.slots, 1),
        best_val_loss=progress.best_val_loss, best_step=progress.best_step, final_val_loss=progress.last_val_loss,
        overflow_skipped_steps=progress.overflow_skipped_steps, nan_loss_steps=progress.nan_loss_steps,
        mode=manifest.mode, max_length=manifest.max_length, isolation=config.isolation, model=config.model,
        precision=config.precision, world_size=dist.world_size, batch_size=config.batch_size,
        grad_accum=config.grad_accum, shards=str(shards), shard_stats_path=str(Path(shards) / MANIFEST),
    )


# --------------------------------------------------------------------------- the run folder and checkpoints


def prepare_out(out: Path, config: TrainConfig, dist: Dist) -> None:
    """Refuse to mix runs; on --resume, check the options against the run's own and mend a save cut short.

    Writes nothing new: OUT/config.json is written once every check has passed.
    """
    if dist.main:
        recover_folder(out / "last")
        recover_folder(out / "best")
    barrier(dist)
    saved_config = out / "config.json"
    if config.resume:
        if not (out / "last" / TRAINER_STATE).is_file():
            raise ConfigError(f"--resume: {out / 'last'} holds no checkpoint to resume; run without --resume")
        if saved_config.is_file():
            mismatches = config.resume_mismatches(load_config(saved_config))
            if mismatches:
                raise ConfigError("--resume with options that change the run: " + "; ".join(mismatches))
    elif saved_config.exists():
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or another --out "
                          f"(or delete {out})")
    barrier(dist)  # every process has looked before the main one writes


def barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def save_checkpoint(folder: Path, model, tokenizer, progress: Progress, config: TrainConfig,
                    optimizer=None, scheduler=None, scaler=None, dist: Dist | None = None) -> None:
    """A Hugging Face folder (safetensors + tokenizer); with an optimizer, also all that --resume needs.

    With an optimizer every process must call it (the RNG states are gathered); only rank 0 writes.
    """
    rng_states = None
    if optimizer is not None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        rng_states = [rng]
        if dist is not None and dist.world_size > 1:
            rng_states = [None] * dist.world_size
            torch.distributed.all_gather_object(rng_states, rng)
        if dist is not None and not dist.main:
            return
    with staged_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = {"progress": dataclasses.asdict(progress), "config": config.to_json()}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_states}, tmp / OPTIMIZER_STATE)


def load_checkpoint(folder: Path, optimizer, scheduler, scaler, dist: Dist) -> Progress:
    """Restore optimizer, scheduler, scaler and this process's RNG; return the progress counters.

    The model weights were loaded from the same folder by `load_model`.
    """
    try:
        state = torch.load(folder / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
        progress = Progress(**json.loads((folder / TRAINER_STATE).read_text())["progress"])
    except (OSError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--resume: {folder} is not a complete checkpoint ({e}); run without --resume") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"][dist.rank % len(state["rng"])]
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    return progress

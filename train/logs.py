"""What a run writes besides checkpoints: OUT/metrics.jsonl, OUT/tb/, OUT/summary.json.

metrics.jsonl holds one JSON object per line, `kind` "train" or "val"; the report
stage reads these keys (keep them stable):

    train: kind step epoch loss learning_rate grad_norm tokens supervised_tokens
           tokens_per_second supervised_tokens_per_second padding_fraction model_tflops mfu
           mfu_measured_peak data_wait_fraction overflow_skipped_steps nan_loss_steps elapsed_seconds
    val:   kind step epoch tokens supervised_tokens val_loss val_supervised_tokens
           best_val_loss best_step elapsed_seconds

tokens and supervised_tokens count what was trained on so far (all processes);
loss is the token-weighted mean over the steps since the previous train record, and so are the
rates: model_tflops (train.flops: the model FLOPs done per second, all processes, the same whatever
the kernel), mfu (that over the device's datasheet peak in the step's precision, times the processes;
null where the device is not in `train.flops.DATASHEET_PEAKS`, and on a CPU), mfu_measured_peak (over
the matmul peak measured at start instead; CUDA only) and data_wait_fraction (the share of step time spent waiting for the next batch to be collated).
summary.json holds SUMMARY_KEYS; `stopped` names the signal that ended the run before --max-steps
("SIGTERM", "SIGINT", "SIGUSR1"; null otherwise: train/signals.py); `attention` (the path taken, `auto` resolved), `flatten` and
`compile` say on which kernel a run trained, `weight_decay_groups` the AdamW groups
(weight decay, tensors, parameters), `rank_memory_bytes` each process's parameter, gradient and
optimizer-state bytes (its shards under `--fsdp`), `group_by_length` whether batches were grouped by length, so layouts are compared on the same one;
`peak_memory_gib` is the device memory torch allocated at most (CUDA only); `threads`
(torch's CPU threads) and `started_at` / `finished_at` (Unix seconds of this process's leg) say
what the throughput was measured alongside.
`Meter` owns the counters and is the one writer of all three records. Non-finite numbers are written as null (strict JSON). TensorBoard gets the same
figures under the tags of `TB_TAGS`.

    >>> finite_or_none(float("nan")), finite_or_none(1.5)
    (None, 1.5)
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shards.folders import write_atomic
from shards.format import MANIFEST

TRAIN_KEYS = ("kind", "step", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "supervised_tokens",
              "tokens_per_second", "supervised_tokens_per_second", "padding_fraction", "model_tflops", "mfu",
              "mfu_measured_peak", "data_wait_fraction", "overflow_skipped_steps", "nan_loss_steps", "elapsed_seconds")
VAL_KEYS = ("kind", "step", "epoch", "tokens", "supervised_tokens", "val_loss", "val_supervised_tokens",
            "best_val_loss", "best_step", "elapsed_seconds")
SUMMARY_KEYS = ("steps", "max_steps", "completed", "stopped", "epoch", "wall_seconds", "train_seconds", "tokens",
                "supervised_tokens", "tokens_per_second", "supervised_tokens_per_second", "padding_fraction",
                "model_tflops", "mfu", "mfu_measured_peak", "datasheet_peak_tflops", "matmul_peak_tflops",
                "data_wait_fraction", "peak_memory_gib", "best_val_loss",
                "best_step", "final_val_loss", "overflow_skipped_steps", "nan_loss_steps",
                "mode", "max_length", "isolation", "attention", "flatten", "compile", "model", "precision",
                "world_size", "threads", "batch_size", "grad_accum", "group_by_length", "fsdp", "activation_checkpointing",
                "weight_decay_groups", "rank_memory_bytes", "shards", "shard_stats_path", "started_at",
                "finished_at")
TB_TAGS = {
    "loss": "Loss/train",
    "val_loss": "Loss/val",
    "learning_rate": "learning_rate",
    "grad_norm": "Train/grad_norm",
    "tokens_per_second": "Throughput/tokens_per_second",
    "supervised_tokens_per_second": "Throughput/supervised_tokens_per_second",
    "padding_fraction": "Data/padding_fraction",
    "model_tflops": "Throughput/model_tflops",
    "mfu": "Throughput/mfu",
    "mfu_measured_peak": "Throughput/mfu_measured_peak",
    "data_wait_fraction": "Data/wait_fraction",
    "overflow_skipped_steps": "Steps/overflow_skipped",
    "nan_loss_steps": "Steps/nan_loss",
}


def finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _step(line: str) -> float:
    """The step of a metrics line; a line torn by a kill mid-write counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class RunLogger:
    """metrics.jsonl + TensorBoard on the main process; does nothing on the others.

    On resume from step k, records after k (written by the run that stopped) are
    dropped from both, so every step appears once.
    """

    def __init__(self, out: Path, enabled: bool, resumed_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it writes

        self.path = Path(out) / "metrics.jsonl"
        if resumed_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resumed_step]
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        self.tb = SummaryWriter(str(Path(out) / "tb"),
                                purge_step=None if resumed_step is None else resumed_step + 1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()  # a killed run keeps every line it logged
        for key, tag in TB_TAGS.items():
            if record.get(key) is not None:
                self.tb.add_scalar(tag, record[key], record["step"])
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


@dataclass
class Progress:
    """Everything about where a run is that is not a tensor; saved in last/trainer_state.json."""

    step: int = 0  # optimizer steps done (skipped updates included)
    epoch: int = 0  # data order: epoch of the permutation ...
    position: int = 0  # ... and micro-batches already drawn from it
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val_loss: float | None = None
    tokens: int = 0  # real tokens trained on (all processes)
    supervised_tokens: int = 0
    slots: int = 0  # positions computed, padding included
    train_seconds: float = 0.0  # time in steps, without evaluation and saving
    data_seconds: float = 0.0  # of which waiting for the next batch
    flops: float = 0.0  # model FLOPs done (train.flops, all processes)
    wall_seconds: float = 0.0
    overflow_skipped_steps: int = 0  # updates skipped because gradients or loss were inf/NaN
    nan_loss_steps: int = 0
    consecutive_nan_steps: int = 0
    consecutive_skipped_steps: int = 0


class Meter:
    """Owns the run's counters (a `Progress`) and writes the train, val and summary records.

    The loss stays on the device between records: the host reads it (a sync) only when
    a train record is written.
    """

    def __init__(self, progress: Progress, logger: RunLogger, bar=None, peak_flops: float | None = None,
                 datasheet_flops: float | None = None):
        """`peak_flops`, `datasheet_flops`: the measured matmul peak, the datasheet peak, of all processes'
        devices together (None: no MFU by that convention)."""
        self.progress, self.logger, self.bar, self.peak_flops = progress, logger, bar, peak_flops
        self.datasheet_flops = datasheet_flops
        self.started, self.wall_before = time.perf_counter(), progress.wall_seconds
        self.started_at = time.time()  # this process's leg of the run, in Unix seconds (the report's overlap check)
        self._window()

    def _window(self) -> None:
        self.loss, self.supervised, self.tokens, self.slots = 0.0, 0, 0, 0
        self.seconds, self.data_seconds, self.flops = 0.0, 0.0, 0.0

    def rates(self, *, tokens: int, supervised: int, slots: int, flops: float, data_seconds: float,
              seconds: float) -> dict:
        """The throughput figures of steps that took `seconds` (a train record's window, or the whole run)."""
        seconds = max(seconds, 1e-9)
        return dict(tokens_per_second=tokens / seconds, supervised_tokens_per_second=supervised / seconds,
                    padding_fraction=1 - tokens / max(slots, 1), model_tflops=flops / seconds / 1e12,
                    data_wait_fraction=data_seconds / seconds,
                    mfu=flops / seconds / self.datasheet_flops if self.datasheet_flops else None,
                    mfu_measured_peak=flops / seconds / self.peak_flops if self.peak_flops else None)

    def elapsed(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def count(self, *, seconds: float, data_seconds: float, flops: float, loss_sum, supervised: int, tokens: int,
              slots: int, stepped: bool, finite_loss: bool) -> None:
        """One optimizer step: `loss_sum` (a device tensor) summed over its supervised tokens."""
        p = self.progress
        p.step += 1
        p.train_seconds, p.data_seconds = p.train_seconds + seconds, p.data_seconds + data_seconds
        p.flops += flops
        p.tokens, p.supervised_tokens, p.slots = p.tokens + tokens, p.supervised_tokens + supervised, p.slots + slots
        p.overflow_skipped_steps += not stepped
        p.nan_loss_steps += not finite_loss
        p.consecutive_nan_steps = 0 if finite_loss else p.consecutive_nan_steps + 1
        p.consecutive_skipped_steps = 0 if stepped else p.consecutive_skipped_steps + 1
        self.loss = self.loss + loss_sum.detach()
        self.supervised, self.tokens, self.slots = self.supervised + supervised, self.tokens + tokens, self.slots + slots
        self.seconds, self.data_seconds = self.seconds + seconds, self.data_seconds + data_seconds
        self.flops += flops
        if self.bar is not None:
            self.bar.update(1)

    def log_train(self, loss_sum: float, learning_rate: float, grad_norm: float) -> None:
        """The record of the steps since the previous one; `loss_sum`: their loss, read from the device."""
        p = self.progress
        loss = loss_sum / max(self.supervised, 1)
        values = dict(kind="train", step=p.step, epoch=p.epoch, loss=loss, learning_rate=learning_rate,
                      grad_norm=grad_norm, tokens=p.tokens, supervised_tokens=p.supervised_tokens,
                      **self.rates(tokens=self.tokens, supervised=self.supervised, slots=self.slots, flops=self.flops,
                                   data_seconds=self.data_seconds, seconds=self.seconds),
                      overflow_skipped_steps=p.overflow_skipped_steps, nan_loss_steps=p.nan_loss_steps,
                      elapsed_seconds=self.elapsed())
        self.logger.log({k: values[k] for k in TRAIN_KEYS})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{values['tokens_per_second']:.0f}")
        self._window()

    def log_val(self, val_loss: float, val_supervised: int) -> None:
        p = self.progress
        values = dict(kind="val", step=p.step, epoch=p.epoch, tokens=p.tokens, supervised_tokens=p.supervised_tokens,
                      val_loss=val_loss, val_supervised_tokens=val_supervised, best_val_loss=p.best_val_loss,
                      best_step=p.best_step, elapsed_seconds=p.wall_seconds)
        self.logger.log({k: values[k] for k in VAL_KEYS})

    def summary(self, config, manifest, shards: Path, world_size: int, attention: str,
                weight_decay_groups: list | None = None, stopped: str | None = None,
                rank_memory_bytes: list | None = None) -> dict:
        """`stopped`: the signal that stopped the run before --max-steps ("SIGTERM", ...), or None.
        `rank_memory_bytes`: per process, its parameter, gradient and optimizer-state bytes (train.fsdp)."""
        p = self.progress
        p.wall_seconds = self.elapsed()
        values = dict(
            **{k: getattr(p, k) for k in ("epoch", "wall_seconds", "train_seconds", "tokens", "supervised_tokens",
                                          "best_val_loss", "best_step", "overflow_skipped_steps", "nan_loss_steps")},
            **{k: getattr(config, k) for k in ("max_steps", "isolation", "flatten", "compile", "model", "precision",
                                               "batch_size", "grad_accum", "group_by_length", "fsdp",
                                               "activation_checkpointing")},
            steps=p.step, completed=p.step == config.max_steps, final_val_loss=p.last_val_loss,
            stopped=None if p.step == config.max_steps else stopped,
            **self.rates(tokens=p.tokens, supervised=p.supervised_tokens, slots=p.slots, flops=p.flops,
                         data_seconds=p.data_seconds, seconds=p.train_seconds),
            matmul_peak_tflops=self.peak_flops / world_size / 1e12 if self.peak_flops else None,  # one device's
            datasheet_peak_tflops=self.datasheet_flops / world_size / 1e12 if self.datasheet_flops else None,
            weight_decay_groups=weight_decay_groups, rank_memory_bytes=rank_memory_bytes,
            peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            mode=manifest.mode,
            max_length=manifest.max_length, attention=attention, world_size=world_size, shards=str(shards),
            shard_stats_path=str(Path(shards) / MANIFEST), threads=torch.get_num_threads(),
            started_at=self.started_at, finished_at=time.time(),
        )
        return {k: values[k] for k in SUMMARY_KEYS}

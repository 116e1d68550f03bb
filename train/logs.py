"""What a run writes besides checkpoints: OUT/metrics.jsonl, OUT/tb/, OUT/summary.json.

metrics.jsonl holds one JSON object per line, `kind` "train" or "val"; the report
stage reads these keys (keep them stable):

    train: kind step epoch loss learning_rate grad_norm tokens supervised_tokens
           tokens_per_second supervised_tokens_per_second padding_fraction
           overflow_skipped_steps nan_loss_steps elapsed_seconds
    val:   kind step epoch tokens supervised_tokens val_loss val_supervised_tokens
           best_val_loss best_step elapsed_seconds

tokens and supervised_tokens count what was trained on so far (all processes);
loss is the token-weighted mean over the steps since the previous train record.
summary.json holds SUMMARY_KEYS. Non-finite numbers are written as null (strict JSON). TensorBoard gets the same
figures under the tags of `TB_TAGS`.

    >>> finite_or_none(float("nan")), finite_or_none(1.5)
    (None, 1.5)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

TRAIN_KEYS = ("kind", "step", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "supervised_tokens",
              "tokens_per_second", "supervised_tokens_per_second", "padding_fraction",
              "overflow_skipped_steps", "nan_loss_steps", "elapsed_seconds")
VAL_KEYS = ("kind", "step", "epoch", "tokens", "supervised_tokens", "val_loss", "val_supervised_tokens",
            "best_val_loss", "best_step", "elapsed_seconds")
SUMMARY_KEYS = ("steps", "max_steps", "completed", "epoch", "wall_seconds", "train_seconds", "tokens",
                "supervised_tokens", "tokens_per_second", "supervised_tokens_per_second", "padding_fraction",
                "best_val_loss", "best_step", "final_val_loss", "overflow_skipped_steps", "nan_loss_steps",
                "mode", "max_length", "isolation", "model", "precision", "world_size", "batch_size",
                "grad_accum", "shards", "shard_stats_path")
TB_TAGS = {
    "loss": "Loss/train",
    "val_loss": "Loss/val",
    "learning_rate": "learning_rate",
    "grad_norm": "Train/grad_norm",
    "tokens_per_second": "Throughput/tokens_per_second",
    "supervised_tokens_per_second": "Throughput/supervised_tokens_per_second",
    "padding_fraction": "Data/padding_fraction",
    "overflow_skipped_steps": "Steps/overflow_skipped",
    "nan_loss_steps": "Steps/nan_loss",
}


def finite_or_none(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def write_json(path: Path, data: dict) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
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

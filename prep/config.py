"""PrepConfig: every knob of `python -m prep` and its default, in one block."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from prep.encoders import ENCODER_CHOICES
from shards.prompts import PROMPT_FORMATS

MODES = ("padding", "packed", "concat")
PACKERS = ("bfd", "seed")
LOSS_ON = ("assistant", "all")
OVERLONG = ("truncate", "drop", "error")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class PrepConfig:
    data: tuple[str, ...] = _opt(("yahma/alpaca-cleaned",), "hub dataset id, a .json/.jsonl/.parquet/.csv file, a folder of them, a quoted glob, or 'sample' (embedded, offline); repeat to read several in order")
    split: str = _opt("train", "split of a hub dataset to read")
    tokenizer: str = _opt("gpt2", "'gpt2' (vendored, offline), a hub id or a local tokenizer folder")
    mode: str = _opt("concat", "row layout: padding (one sample a row), packed (concatenate and cut), concat (bin-pack whole samples)", choices=MODES)
    max_length: int = _opt(256, "tokens per row (the seed's context_length)")
    packer: str = _opt("bfd", "concat packer: bfd (best-fit-decreasing + repair) or seed (two-pointer greedy)", choices=PACKERS)
    prompt_format: str = _opt("alpaca", "user turn of Alpaca records: alpaca (the seed's preamble) or none (the instruction as is); recorded for generation", choices=PROMPT_FORMATS)
    loss_on: str = _opt("assistant", "tokens with loss: assistant (each reply + the template's end-of-turn token) or all (the seed's code)", choices=LOSS_ON)
    overlong: str = _opt("truncate", "sample longer than max-length in padding/concat and validation rows: truncate, drop or error", choices=OVERLONG)
    val_ratio: float = _opt(0.1, "fraction of records (the last ones, as the seed) kept for validation, always padding mode")
    seed: int = _opt(0, "seed of the concat row shuffle")
    skip_bad: bool = _opt(False, "skip bad records (counted by reason in the manifest) instead of stopping")
    limit: int | None = _opt(None, "read only the first N records (quick runs)")
    encoder: str = _opt("auto", "text encoder: auto (tiktoken where its ids are identical, checked at start, else the fast tokenizer), tiktoken or tokenizers", choices=ENCODER_CHOICES)
    batch_size: int = _opt(1000, "records tokenized per batch (bounds prep's memory)")
    out: str | None = _opt(None, "output folder (default: shards/MODE-MAX_LENGTH)")
    stats_batch_size: int = _opt(16, "batch size assumed by the pad_fraction_at_batch statistic")

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # one source given as a plain string (the Python API)
            object.__setattr__(self, "data", (self.data,))
        object.__setattr__(self, "data", tuple(self.data))

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("shards") / f"{self.mode}-{self.max_length}"

    def validate(self) -> "PrepConfig":
        problems = []
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if not self.data:
            problems.append("--data is empty; name at least one source")
        if self.max_length < 2:
            problems.append(f"--max-length must be at least 2, got {self.max_length}")
        if not 0.0 <= self.val_ratio < 1.0:
            problems.append(f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"--limit must be positive, got {self.limit}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be positive, got {self.batch_size}")
        if self.stats_batch_size < 1:
            problems.append(f"--stats-batch-size must be positive, got {self.stats_batch_size}")
        if problems:
            raise ValueError("invalid prep options:\n  " + "\n  ".join(problems))
        return self

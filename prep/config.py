"""PrepConfig: every knob of `python -m prep` and its default, in one block.

Each field's help text becomes its `python -m prep --help` line (`sftcli.click_options`).

    >>> PrepConfig(mode="pack", max_length=1).validate()
    Traceback (most recent call last):
    ...
    sftcli.ConfigError: 2 problems with the prep options: --max-length: must be at least 2, got 1; --mode: must be one of padding, packed, concat, got 'pack'
"""
from __future__ import annotations

import datetime
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prep.encoders import EncoderChoice
from prep.packing import Mode, Packer
from prep.template import LossOn, SystemMessage
from sftcli import check_config, flag, opt as _opt
from shards.prompts import PromptFormat


@dataclass(frozen=True)
class PrepConfig:
    data: tuple[str, ...] = _opt(
        ("yahma/alpaca-cleaned",), "hub dataset id, a .json/.jsonl/.parquet/.csv file, a folder of them, a quoted "
        "glob, or 'sample' (embedded, offline); repeat to read several, in the order given")
    split: str = _opt("train", "split of a hub dataset to read")
    tokenizer: str = _opt("gpt2", "'gpt2' (vendored, offline), a hub id or a local tokenizer folder")
    mode: Mode = _opt(
        "concat", "row layout: padding (one sample a row), packed (concatenate and cut every max-length tokens: "
        "TRL's 'wrapped'), concat (bin-pack whole samples: TRL's 'bfd')")
    max_length: int = _opt(256, "tokens per row (the source article's context_length)")
    packer: Packer = _opt(
        "bfd", "concat packer: bfd (best-fit-decreasing + repair) or greedy (the source article's two-pointer "
        "greedy; seed: its deprecated old name)")
    prompt_format: PromptFormat = _opt(
        "alpaca", "user turn of Alpaca records: alpaca (the source article's preamble) or none (the instruction as is); "
        "recorded for generation")
    loss_on: LossOn = _opt(
        "assistant", "tokens with loss: assistant (each reply + the template's end-of-turn token) or all (the source article's code)")
    system_message: SystemMessage = _opt(
        "keep", "a system message: keep (as the template renders it), fold (prepend it to the first user turn, "
        "for templates that drop it), drop, or error (stop where the template drops or moves it)")
    chat_template: str | None = _opt(None, "a .jinja file that replaces the tokenizer's chat template")
    chat_template_kwargs: str = _opt(
        "{}", "options for the chat template, a JSON object (e.g. '{\"enable_thinking\": false}')")
    template_date: str | None = _opt(
        None, "YYYY-MM-DD a template's strftime_now gives (Llama 3's system date); default: the date "
        "recorded by the first build of --out, else today")
    overlong: Literal["truncate", "drop", "error"] = _opt(
        "truncate", "sample longer than max-length in padding/concat and validation rows: truncate, drop or error")
    val_ratio: float = _opt(0.1, "fraction of records (the last ones, as the source article) kept for validation, always padding mode")
    seed: int = _opt(0, "seed of the concat row shuffle")
    skip_bad: bool = _opt(False, "skip bad records (counted by reason in the manifest) instead of stopping")
    limit: int | None = _opt(None, "read only the first N records (quick runs)")
    encoder: EncoderChoice = _opt(
        "auto", "text encoder: auto (tiktoken where its ids are identical, checked at start, else the fast "
        "tokenizer), tiktoken or tokenizers")
    batch_size: int = _opt(1000, "records tokenized per batch (bounds prep's memory)")
    workers: int = _opt(0, "processes that tokenize batches; 0: the usable cores. The shards are the same bytes "
                        "for any number")
    engine: Literal["local", "ray"] = _opt(
        "local", "where the workers run: local (processes on this machine) or ray (Ray actors; pip install "
        "'sftpack[ray]'; --out must be on a file system every node mounts)")
    ray_address: str | None = _opt(None, "Ray cluster to join with --engine ray (e.g. auto); default: RAY_ADDRESS, "
                                   "else a local Ray started for the run")
    out: str | None = _opt(None, "output folder (default: shards/MODE-MAX_LENGTH)")
    stats_batch_size: int = _opt(16, "batch size assumed by the pad_fraction_at_batch statistic")

    def __post_init__(self) -> None:
        # One source may be given as a plain string (the Python API); click gives a tuple.
        object.__setattr__(self, "data", (self.data,) if isinstance(self.data, str) else tuple(self.data))

    @property
    def template_kwargs(self) -> dict:
        return json.loads(self.chat_template_kwargs)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("shards") / f"{self.mode}-{self.max_length}"

    def validate(self) -> "PrepConfig":
        """Collect every problem, raise one ConfigError; return self so calls chain."""
        problems = []
        if not self.data:
            problems.append("--data: empty; name at least one source")
        if self.max_length < 2:
            problems.append(f"--max-length: must be at least 2, got {self.max_length}")
        if not 0.0 <= self.val_ratio < 1.0:
            problems.append(f"--val-ratio: must be in [0, 1), got {self.val_ratio}")
        if self.workers < 0:
            problems.append(f"--workers: must be 0 (the usable cores) or more, got {self.workers}")
        for name in ("limit", "batch_size", "stats_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{flag(name)}: must be positive, got {value}")
        try:
            if not isinstance(json.loads(self.chat_template_kwargs), dict):
                problems.append("--chat-template-kwargs: must be a JSON object, e.g. '{\"enable_thinking\": false}'")
        except json.JSONDecodeError as e:
            problems.append(f"--chat-template-kwargs: not JSON ({e}); e.g. '{{\"enable_thinking\": false}}'")
        if self.template_date is not None:
            try:
                datetime.date.fromisoformat(self.template_date)
            except ValueError:
                problems.append(f"--template-date: expected YYYY-MM-DD, got {self.template_date!r}")
        if self.engine == "ray" and importlib.util.find_spec("ray") is None:
            problems.append("--engine ray: Ray is not installed; pip install 'sftpack[ray]' (or pip install ray), "
                            "or use --engine local")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            problems.append(f"--chat-template: {self.chat_template}: no such file; give a .jinja chat template file")
        check_config(self, problems, "prep")
        return self

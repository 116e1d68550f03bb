"""The train stage's one configuration: a frozen dataclass, every knob and its default below.

Each field's help text becomes its `python -m train --help` line (see `train/__main__.py`).

    >>> config = TrainConfig(shards=Path("shards/concat-256"), out=Path("runs/concat"))
    >>> config.batch_size, config.learning_rate, config.warmup_steps, config.eval_interval
    (16, 0.0001, 1000, 300)
    >>> TrainConfig(shards=Path("s"), batch_size=0, precision="fp8").validate()
    Traceback (most recent call last):
    ...
    sftcli.ConfigError: 2 problems with the train options: --batch-size: must be at least 1, got 0; --precision: must be one of auto, fp16, bf16, fp32, got 'fp8'
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_type_hints

from sftcli import ConfigError, check_config, flag, opt

# Fields that may differ between a run and its --resume: they change neither the model,
# nor the data order, nor the learning-rate schedule (max_steps does: extend a run on purpose).
RESUMABLE_CHANGES = ("resume", "stop_after", "verify", "max_nan_steps", "log_interval", "max_steps", "progress",
                     "eval_batch_size", "activation_checkpointing")


@dataclass(frozen=True)
class TrainConfig:
    # ---- what to train on, what to train, where to write (defaults: the source article's where it had one)
    shards: Path = opt(None, "shard set folder written by `python -m prep`", required=True)
    out: Path = opt(Path("runs/train"), "run folder: config.json, metrics.jsonl, tb/, best/, last/, summary.json")
    model: str = opt("tiny", "named random-init config (tiny, tiny-untied, gpt2-124m), a local model folder, or a "
                             "hub id")
    # ---- the loop: the source article's defaults
    batch_size: int = opt(16, "rows per micro-batch, summed over all processes (each takes batch_size / N)")
    grad_accum: int = opt(1, "micro-batches per optimizer step; the loss is normalised over the whole step")
    max_steps: int = opt(10000, "optimizer steps of the whole run; the learning rate decays to 0 at this step")
    learning_rate: float = opt(1e-4, "peak AdamW learning rate")
    warmup_steps: int = opt(1000, "steps of linear warm-up from 0 to --learning-rate")
    adam_beta1: float = opt(0.9, "AdamW beta1 (torch's and the Trainer's default)")
    adam_beta2: float = opt(0.999, "AdamW beta2 (torch's and the Trainer's default; nanoGPT uses 0.95)")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    weight_decay: float = opt(0.01, "AdamW weight decay of the matmul weights (torch's default, which the source "
                                    "article used implicitly); biases, norm weights and embeddings get none")
    decay_all: bool = opt(False, "decay every parameter, biases, norms and embeddings too: one AdamW group, as the "
                                 "source article's plain AdamW(model.parameters())")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    eval_batch_size: int | None = opt(None, "rows per validation batch, summed over all processes [--batch-size]")
    eval_interval: int = opt(300, "evaluate on the whole val split and save best/ and last/ every this many steps")
    log_interval: int = opt(10, "write train metrics every this many steps")
    precision: Literal["auto", "fp16", "bf16", "fp32"] = opt(
        "auto", "auto: fp16 autocast + GradScaler on CUDA, fp32 on CPU; or force one")
    # ---- batching
    isolation: Literal["on", "off"] = opt(
        "on", "on: positions restart and attention stops at every segment; off: the source article's cross-sample attention")
    shuffle: bool = opt(True, "seeded per-epoch permutation of the rows (--no-shuffle: file order, like the source article)")
    seed: int = opt(1337, "seed of the row permutation, random init and dropout")
    group_by_length: bool = opt(False, "batches of rows of similar length (Hugging Face's group_by_length): seeded "
                                       "mega-batches of 50 batches, sorted by length inside; less padding")
    # ---- model set-up
    pad_vocab_to: int = opt(1, "round the embedding rows up to a multiple of this (64 helps tensor cores)")
    dropout: float | None = opt(None, "override the model's dropout probabilities (default: keep the model's)")
    attention: Literal["auto", "sdpa", "eager", "varlen", "flash", "flex"] = opt(
        "auto", "varlen: causal attention inside each sample (any device); flash: CUDA varlen kernels (flash-attn, "
                "with --flatten; else torch's); flex: flex_attention block mask (trains on CUDA only); sdpa: dense mask; eager; "
                "auto: flash where it runs, else varlen (train/attention.py)")
    flatten: bool = opt(False, "padding-free: join each micro-batch's rows into one sequence whose positions restart "
                               "per sample (TRL's padding_free)")
    compile: bool = opt(False, "torch.compile the model; widths are padded to a multiple of 64 so shapes repeat")
    # ---- models bigger than one GPU (train/fsdp.py, docs/scale.md)
    fsdp: bool = opt(False, "under torchrun, shard parameters, gradients and optimizer state over the processes "
                            "(FSDP2 fully_shard per block, then the root) instead of DDP; last/ becomes a sharded "
                            "torch.distributed.checkpoint folder")
    activation_checkpointing: bool = opt(False, "keep only each transformer block's input and recompute the rest "
                                                "in backward: less activation memory, about a third more compute")
    # ---- safety and resuming
    verify: bool = opt(False, "also check each shard file's sha256 before training")
    resume: bool = opt(False, "continue the run in --out from its last/ checkpoint")
    stop_after: int | None = opt(None, "stop (after saving last/) at this step; the schedule still runs to --max-steps")
    max_nan_steps: int = opt(10, "stop with an error after more than this many consecutive steps with a NaN/inf "
                                  "loss, or more than this many consecutive skipped updates (inf/NaN gradients)")
    progress: bool = opt(True, "show a tqdm bar (it hides itself when stderr is not a terminal)")

    def validate(self) -> "TrainConfig":
        """Collect every problem, raise once; return self so calls chain."""
        problems = []

        def need(ok: bool, name: str, message: str) -> None:
            if not ok:
                problems.append(f"{flag(name)}: {message}")

        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "log_interval", "pad_vocab_to"):
            value = getattr(self, name)
            need(value >= 1, name, f"must be at least 1, got {value}")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size",
             f"must be at least 1, got {self.eval_batch_size}")
        for name in ("warmup_steps", "max_nan_steps"):
            value = getattr(self, name)
            need(value >= 0, name, f"must be at least 0, got {value}")
        need(self.learning_rate > 0, "learning_rate", f"must be positive, got {self.learning_rate}")
        need(self.adam_eps > 0, "adam_eps", f"must be positive, got {self.adam_eps}")
        for name in ("adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}")
        need(self.weight_decay >= 0, "weight_decay", f"must be at least 0, got {self.weight_decay}")
        need(self.grad_clip >= 0, "grad_clip", f"must be at least 0, got {self.grad_clip}")
        need(self.dropout is None or 0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        need(self.stop_after is None or 1 <= self.stop_after <= self.max_steps, "stop_after",
             f"must be between 1 and --max-steps ({self.max_steps}), got {self.stop_after}")
        need(not (self.fsdp and self.compile), "fsdp", "cannot be combined with --compile yet; drop one of them")
        need(not (self.fsdp and self.precision == "fp16"), "fsdp", "cannot run --precision fp16 (it needs a sharded "
             "GradScaler, which train does not have); use --precision bf16 or fp32")
        check_config(self, problems, "train")
        return self

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown train options in a saved config: {', '.join(unknown)}")
        return cls(**{k: Path(v) if hints[k] is Path and v is not None else v for k, v in data.items()})

    def resume_mismatches(self, saved: "TrainConfig") -> list[str]:
        """Options that differ from the run being resumed and would change what it trains.

        >>> a = TrainConfig(shards=Path("s"))
        >>> a.resume_mismatches(dataclasses.replace(a, seed=1, resume=True, stop_after=5, eval_batch_size=8))
        ['--seed: the run used 1, now 1337']
        """
        return [
            f"{flag(f.name)}: the run used {getattr(saved, f.name)}, now {getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name not in RESUMABLE_CHANGES and getattr(self, f.name) != getattr(saved, f.name)
        ]


PARALLEL = ("ddp", "fsdp")  # --parallel's values: how several processes share the training


def parallel_option(parallel: str | None, fsdp: bool) -> bool:
    """--parallel ddp|fsdp, another spelling of --fsdp: whether to shard (DDP is the default under torchrun).

    >>> parallel_option("fsdp", False), parallel_option("ddp", False), parallel_option(None, True)
    (True, False, True)
    >>> parallel_option("tp", False)
    Traceback (most recent call last):
    ...
    sftcli.ConfigError: --parallel: must be ddp or fsdp, got 'tp'
    """
    if parallel is None:
        return fsdp
    if parallel not in PARALLEL:
        raise ConfigError(f"--parallel: must be {' or '.join(PARALLEL)}, got {parallel!r}")
    if fsdp and parallel != "fsdp":
        raise ConfigError(f"--parallel {parallel} contradicts --fsdp; give one of them")
    return parallel == "fsdp"


def from_command_line(options: dict) -> TrainConfig:
    """The config of `python -m train`'s parsed options: --parallel folded into --fsdp.

    >>> from_command_line({"shards": Path("s"), "fsdp": False, "parallel": "fsdp"}).fsdp
    True
    """
    options = dict(options)
    parallel = options.pop("parallel", None)
    return TrainConfig(**{**options, "fsdp": parallel_option(parallel, options.get("fsdp", False))})


def launcher() -> str:
    """How this process was started: `python -m train`, or torchrun with this node's processes."""
    world, local = os.environ.get("WORLD_SIZE", "1"), os.environ.get("LOCAL_WORLD_SIZE")
    if world == "1":
        return "python -m train"
    if local in (None, world):
        return f"torchrun --nproc_per_node {world} -m train"
    return f"torchrun --nproc_per_node {local} (and the same --nnodes and rendezvous options) -m train"


def resume_command(config: TrainConfig, program: str | None = None) -> str:
    """The command that continues the run of `config`: its options that differ from the defaults, and --resume
    (`program`: how this process was started, `launcher()`, unless given).

    >>> resume_command(TrainConfig(shards=Path("s"), out=Path("my run"), max_steps=50, shuffle=False, stop_after=9))
    "python -m train --shards s --out 'my run' --max-steps 50 --no-shuffle --resume"
    """
    parts = [program or launcher()]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in ("resume", "stop_after") or value is None or value == field.default:
            continue
        if isinstance(value, bool):
            parts.append(flag(field.name) if value else f"--no-{flag(field.name)[2:]}")
        else:
            parts.append(f"{flag(field.name)} {shlex.quote(str(value))}")
    return " ".join(parts + ["--resume"])


def load_config(path: Path) -> TrainConfig:
    return TrainConfig.from_json(json.loads(Path(path).read_text()))

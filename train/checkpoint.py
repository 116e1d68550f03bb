"""Checkpoints and the run folder: RUN/best/ and RUN/last/, written whole or not at all.

    RUN/best/  the lowest validation loss so far: a Hugging Face folder (safetensors, tokenizer)
    RUN/last/  the same plus optimizer.pt and trainer_state.json: all that `--resume` needs

A save goes through `shards.folders.staged_folder` (the one atomic-folder protocol, shared
with shard sets), so a kill never leaves half a checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed

from sftcli import ConfigError
from shards.folders import recover_folder, staged_folder
from train.config import TrainConfig, load_config
from train.logs import Progress

if TYPE_CHECKING:
    from train.step import Dist

TRAINER_STATE = "trainer_state.json"  # Progress + config: the counters a resume restores
OPTIMIZER_STATE = "optimizer.pt"  # optimizer, scheduler, GradScaler, per-process RNG states


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


def save_checkpoint(folder: Path, model, tokenizer, progress: Progress, config: TrainConfig, *,
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
    saved_groups = len(state["optimizer"]["param_groups"])
    if saved_groups != len(optimizer.param_groups):  # one group: saved before weight decay by convention
        raise ConfigError(f"--resume: {folder} holds {saved_groups} AdamW parameter group(s) and this run makes "
                          f"{len(optimizer.param_groups)} (biases, norms and embeddings are no longer decayed "
                          f"unless --decay-all); its optimizer state cannot be restored exactly: train again in a "
                          f"new --out")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"][dist.rank % len(state["rng"])]
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    return progress

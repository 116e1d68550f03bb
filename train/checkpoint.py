"""Checkpoints and the run folder: RUN/best/ and RUN/last/, written whole or not at all.

    RUN/best/  the lowest validation loss so far: a Hugging Face folder (safetensors, tokenizer)
    RUN/last/  the same plus optimizer.pt and trainer_state.json: all that `--resume` needs

A save goes through `shards.folders.staged_folder` (the one atomic-folder protocol, shared
with shard sets), so a kill never leaves half a checkpoint. One process writes a run folder at a time:
`lock_run_folder` (shards.lock) holds `.RUN.lock` beside it for the whole run.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: a DCP folder that cannot load

from sftcli import ConfigError
from shards.folders import folder_bytes, recover_folder, staged_folder
from shards.lock import FolderBusy, folder_lock
from train.config import TrainConfig, load_config, resume_command
from train.fsdp import EXTRA_STATE, is_sharded_checkpoint, load_sharded, save_sharded
from train.logs import Progress

if TYPE_CHECKING:
    from train.step import Dist

TRAINER_STATE = "trainer_state.json"  # Progress + config: the counters a resume restores
OPTIMIZER_STATE = "optimizer.pt"  # optimizer, scheduler, GradScaler, per-process RNG states


@contextmanager
def lock_run_folder(out: Path, dist: Dist):
    """Hold the run folder's lock (shards.lock) for the block: rank 0 takes it, every rank learns whether
    it did, so all stop together when another process writes the folder."""
    with ExitStack() as stack:
        refused = None
        if dist.main:
            try:
                stack.enter_context(folder_lock(out, "train", fix="or pass another --out"))
            except FolderBusy as e:
                refused = str(e)
        if dist.world_size > 1:
            box = [refused]
            torch.distributed.broadcast_object_list(box, src=0)
            refused = box[0]
        if refused:
            raise FolderBusy(refused)
        yield


def prepare_out(out: Path, config: TrainConfig, dist: Dist) -> bool:
    """Refuse to mix runs; on --resume, check the options against the run's own and mend a save cut short.

    Returns whether OUT/last holds a checkpoint to resume: --resume on a run that stopped before its
    first one trains from step 0 in its folder. Writes nothing new: OUT/config.json is written once
    every check has passed.
    """
    if dist.main:
        recover_folder(out / "last")
        recover_folder(out / "best")
    barrier(dist)
    saved_config = out / "config.json"
    saved = _saved_config(saved_config, strict=config.resume)
    # the command that continues the run in `out`: its own options (a saved path as it was given), --resume
    resume = resume_command(dataclasses.replace(saved, out=config.out) if saved else config)
    checkpoint = (out / "last" / TRAINER_STATE).is_file()
    if config.resume:
        mismatches = config.resume_mismatches(saved) if saved else []
        if mismatches:
            raise ConfigError("--resume with options that change the run: " + "; ".join(mismatches)
                              + f"; continue it with: {resume}; or pass another --out")
        if not checkpoint and dist.main:
            print(f"--resume: {out / 'last'} holds no checkpoint yet: training from step 0 in {out}"
                  + (" (its config.json matches)" if saved else ""), flush=True)
    elif saved_config.exists():
        raise ConfigError(f"{out} already holds a run: continue it with: {resume}; or pass another --out "
                          f"(or delete {out})")
    barrier(dist)  # every process has looked before the main one writes
    return checkpoint


def _saved_config(path: Path, strict: bool) -> TrainConfig | None:
    """The run's own options, or None where there are none (or, unless `strict`, none this version reads)."""
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except (ConfigError, TypeError, ValueError):
        if strict:
            raise
        return None


def barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


def _rng_states(dist: Dist | None) -> list[dict]:
    """Every process's RNG states, in rank order (every process must call it)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return dist.gather(rng) if dist is not None else [rng]


def save_checkpoint(folder: Path, model, tokenizer, progress: Progress, config: TrainConfig, *,
                    optimizer=None, scheduler=None, scaler=None, dist: Dist | None = None,
                    state_dict: dict | None = None) -> None:
    """A Hugging Face folder (safetensors + tokenizer); with an optimizer, also all that --resume needs.

    With an optimizer every process must call it (the RNG states are gathered); only rank 0 writes,
    except under --fsdp, where every process writes its shards into last/dcp. `state_dict`: the
    weights to save where the model's own are shards (`train.fsdp.full_state_dict`).
    """
    rng_states = None
    if optimizer is not None:
        rng_states = _rng_states(dist)
        if config.fsdp:
            _save_sharded_last(folder, model, tokenizer, progress, config, optimizer,
                               {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states},
                               dist)
            return
        if dist is not None and not dist.main:
            return
    with staged_folder(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        _write_trainer_state(tmp, progress, config)
        if optimizer is not None:  # into a Python file: a full disk is then an OSError (ENOSPC), which
            with open(tmp / OPTIMIZER_STATE, "wb") as file:  # torch's own writer reports as "unexpected pos"
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict(), "rng": rng_states}, file)


def _write_trainer_state(folder: Path, progress: Progress, config: TrainConfig) -> None:
    state = {"progress": dataclasses.asdict(progress), "config": config.to_json()}
    (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")


@contextmanager
def _staged_on_every_rank(folder: Path, dist: Dist):
    """`staged_folder` for a folder every process writes into: rank 0 stages and swaps it in once all are done."""
    with staged_folder(folder) if dist.main else nullcontext() as tmp:
        box = [tmp]
        if dist.world_size > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        yield Path(box[0])
        barrier(dist)


def _save_sharded_last(folder: Path, model, tokenizer, progress: Progress, config: TrainConfig, optimizer,
                       extra: dict, dist: Dist) -> None:
    """last/ under --fsdp: dcp/ (model and optimizer, sharded), extra.pt (scheduler, scaler, RNGs), the model's
    config and the tokenizer, trainer_state.json."""
    with _staged_on_every_rank(folder, dist) as tmp:
        save_sharded(tmp, model, optimizer)
        if dist.main:
            model.config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _write_trainer_state(tmp, progress, config)
            with open(tmp / EXTRA_STATE, "wb") as file:  # a Python file: a full disk is an OSError (ENOSPC)
                torch.save(extra, file)


def load_checkpoint(folder: Path, model, optimizer, scheduler, scaler, dist: Dist) -> Progress:
    """Restore optimizer, scheduler, scaler and this process's RNG; return the progress counters.

    The model weights were loaded from the same folder by `load_model`, except from a sharded last/
    (--fsdp), which loads model and optimizer here, resharded onto this run's processes.
    """
    sharded = is_sharded_checkpoint(folder)
    try:
        state = torch.load(folder / (EXTRA_STATE if sharded else OPTIMIZER_STATE), map_location="cpu",
                           weights_only=True)
        progress = Progress(**json.loads((folder / TRAINER_STATE).read_text())["progress"])
        if sharded:
            load_sharded(folder, model, optimizer)
    except (OSError, RuntimeError, KeyError, TypeError, json.JSONDecodeError, CheckpointException) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]  # DCP's carry a whole traceback
        raise ConfigError(f"--resume: {folder} is not a complete checkpoint ({reason}); move it aside (mv {folder} "
                          f"{folder}.broken) and --resume trains from step 0") from None
    saved_groups = len(state["optimizer"]["param_groups"]) if not sharded else len(optimizer.param_groups)
    if saved_groups != len(optimizer.param_groups):  # one group: saved before weight decay by convention
        raise ConfigError(f"--resume: {folder} holds {saved_groups} AdamW parameter group(s) and this run makes "
                          f"{len(optimizer.param_groups)} (biases, norms and embeddings are no longer decayed "
                          f"unless --decay-all); its optimizer state cannot be restored exactly: train again in a "
                          f"new --out")
    if not sharded:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"][dist.rank % len(state["rng"])]
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    return progress


def checkpoint_bytes(folder: Path, model, optimizer=None) -> int:
    """About what a save into `folder` needs free: the size of the checkpoint there, else the weights
    (three times with an optimizer: AdamW keeps two moments), plus room for the tokenizer."""
    if Path(folder).is_dir():
        return folder_bytes(folder)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights * (3 if optimizer is not None else 1) + (8 << 20)

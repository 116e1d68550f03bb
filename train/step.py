"""One training step's parts: draw (collate in a background thread), backward, update; and the processes.

    batches = prefetcher.next()                 # this step's micro-batches, collated while the last step ran
    loss_sum = backward(ddp, loss_model, batches, loss_scale=1 / supervised_tokens, autocast=autocast, scaler=scaler)
    grad_norm, stepped, finite_loss = update(model, optimizer, scaler, grad_clip, torch.isfinite(loss_sum))

Benchmarks call the same three: `get_batch`, `backward` (it takes a plain Hugging Face model
too) and `update`.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed
from torch.distributed.tensor import DTensor

from shards.batch import get_rows_batch
from shards.format import SplitArrays
from train.attention import AttentionPlan
from train.head import LabelLossModel

COMPILE_WIDTH_MULTIPLE = 64  # --compile pads widths to this multiple, so shapes repeat and it compiles few graphs


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

    def gather(self, value) -> list:
        """Every process's `value` (a picklable object), in rank order."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


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
        precision = "fp16" if device.type == "cuda" else "fp32"  # the source article's choice on GPU
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def get_batch(split: SplitArrays, rows: np.ndarray, pad_token_id: int, *, isolation: bool, device: torch.device,
              attention: AttentionPlan, flatten: bool = False, pad_to_multiple_of: int = 1, pin: bool = False):
    """Collate rows of the memory-mapped split; return model inputs (on `device`), and the Batch with its counts.

    The attention plan's builder adds its path's inputs (`train.attention.resolve_attention`):
    varlen the regrouping of the batch's samples, flex the sequence of every position, flash on
    torch's kernel the cumulative sequence lengths. With `pin` the host tensors are pinned and
    copied without blocking.
    """
    batch = get_rows_batch(split, rows, pad_token_id, isolation, flatten=flatten, pad_to_multiple_of=pad_to_multiple_of)
    host = {**{k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "position_ids", "labels")},
            **attention.inputs(batch)}
    if pin:
        host = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in host.items()}
    return {k: v.to(device, non_blocking=pin) if hasattr(v, "to") else v for k, v in host.items()}, batch


class Prefetcher:
    """Draws and collates the next step's micro-batches in a background thread while this step runs.

    `draw()` returns (the step's [(inputs, Batch)], the row order's (epoch, position) after it):
    progress records the position of the step trained, not of the one collated ahead.
    """

    def __init__(self, draw):
        self.draw = draw
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate")
        self.pending = self.pool.submit(draw)

    def next(self):
        drawn = self.pending.result()
        self.pending = self.pool.submit(self.draw)
        return drawn

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def backward(ddp, model, batches: list, *, loss_scale: float, autocast, scaler) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches; returns their summed token loss.

    Each micro-batch's summed loss is multiplied by `loss_scale` (1 / the step's supervised
    tokens), so the gradients are of the token-weighted mean over the whole step. The
    processes exchange gradients once, on the last micro-batch (`gradient_sync`). `model` is
    the `LabelLossModel` (`ddp` its DDP wrapper, or itself, sharded or not); a plain Hugging
    Face model is wrapped here.
    """
    if not isinstance(model, LabelLossModel):
        ddp = model = LabelLossModel(model)
    loss_sum = torch.zeros((), device=next(model.parameters()).device)
    for micro, (inputs, _) in enumerate(batches):
        with gradient_sync(ddp, micro == len(batches) - 1):
            with autocast():
                micro_loss = ddp(**inputs)
            scaler.scale(micro_loss * loss_scale).backward()
        loss_sum += micro_loss.detach()
    return loss_sum


def gradient_sync(ddp, sync: bool):
    """The context of one micro-batch's forward and backward: gradients are exchanged between the processes
    only when `sync` (the step's last micro-batch); before, each process accumulates its own. DDP: its
    `no_sync()`. FSDP2 (`fully_shard`): `set_requires_gradient_sync`, which skips the reduce-scatter and keeps
    the unsharded gradients until the last micro-batch reduces their sum (more memory, less traffic).
    One process: nothing to exchange."""
    if hasattr(ddp, "set_requires_gradient_sync"):
        ddp.set_requires_gradient_sync(sync)
        return nullcontext()
    return ddp.no_sync() if not sync and hasattr(ddp, "no_sync") else nullcontext()


def parameter_groups(model, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """AdamW's parameter groups: decay on the matmul weights only (nanoGPT's `dim >= 2` rule), none on
    biases, norm weights and embeddings (as Hugging Face's Trainer and torchtune; a tied LM head is the
    embedding, so it is not decayed either). `decay_all`: one group, every parameter decayed (the source
    article's plain `AdamW(model.parameters())`).

    >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    >>> [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in parameter_groups(net, 0.1)]
    [(0.1, [(3, 4)]), (0.0, [(10, 4), (3,), (3,), (3,)])]
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_all:
        return [{"params": params, "weight_decay": weight_decay}]
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    chosen = {id(p) for p in decay}
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in chosen], "weight_decay": 0.0}]


def make_optimizer(model, config) -> torch.optim.AdamW:
    """The loop's AdamW (a `TrainConfig`'s settings) over `parameter_groups`. Fused on every device: the
    whole update of a parameter in one kernel. On a CPU, torch's default per-op update measured ~7x slower
    for the demo's 6.5M parameters (87 ms a step against 13 ms, single-threaded), for the same update up to
    rounding."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay, config.decay_all), lr=config.learning_rate,
                             eps=config.adam_eps, betas=(config.adam_beta1, config.adam_beta2), fused=True)


def group_sizes(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each parameter group's weight decay, tensors and parameters: what the summary records."""
    return [{"weight_decay": g["weight_decay"], "tensors": len(g["params"]),
             "parameters": sum(p.numel() for p in g["params"])} for g in optimizer.param_groups]


def clip_gradients(model, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to `max_norm`; return the norm before. Under --fsdp the gradients are
    shards (DTensors): their norm is reduced over the processes before any is scaled."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def update(model, optimizer, scaler, grad_clip: float, finite_loss) -> tuple[torch.Tensor, bool, bool]:
    """Unscale, clip and step; an update with inf/NaN gradients or loss is skipped.

    Returns (grad norm, a device tensor; whether it stepped; whether the loss was finite).
    Reading the two flags is the step's one host sync: the skip must be known before the
    optimizer and the scheduler move (the GradScaler makes the same sync).
    """
    scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = clip_gradients(model, grad_clip or math.inf)
    finite_loss, finite_grad = torch.stack([torch.as_tensor(finite_loss, device=grad_norm.device),
                                            torch.isfinite(grad_norm)]).tolist()
    stepped = finite_loss and finite_grad
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the update itself when the gradients hold inf/NaN
    elif stepped:
        optimizer.step()
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), stepped, finite_loss

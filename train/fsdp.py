"""Models bigger than one GPU: activation checkpointing, FSDP2 sharding, and the sharded checkpoint.

    torchrun --nproc_per_node 8 -m train --shards shards/concat-256 --model gpt2 --fsdp --activation-checkpointing

`train.setup.build` calls these in this order (torchtitan's and accelerate's): the blocks are
checkpointed (`checkpoint_blocks`), then each block and then the root are sharded (`shard`), then
the optimizer is made over the sharded parameters. Only rank 0 loads the weights: the other processes
build the model on the meta device (`train.model.empty_model`) and receive their shards from rank 0 after
sharding (`start_weights` / `spread_weights`). Under `--fsdp` `last/` is a
torch.distributed.checkpoint folder (`save_sharded` / `load_sharded`) that any number of processes
can resume (DCP reshards); `best/` stays a plain Hugging Face folder gathered by `full_state_dict`.
With one process `--fsdp` shards nothing (there is nowhere to shard to) but keeps the DCP `last/`.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed

from train.attention import current_varlen_batch, varlen_batch
from train.model import ModelError

DCP_FOLDER = "dcp"  # last/dcp: model and optimizer, one file per rank and DCP's .metadata
EXTRA_STATE = "extra.pt"  # last/extra.pt: scheduler, GradScaler, every rank's RNG (rank 0 writes it)
# Whether an untied LM head is an FSDP unit of its own (its weight gathered around the label-only head's call)
# rather than sharded with the root (gathered with the embeddings for the forward). `python -m
# benchmarks.fsdp_head` measures both; docs/scale.md has its figures. The faster one is the default; on 2 CPU
# processes neither was faster beyond the spread of its rounds, so the root keeps it (one collective fewer, and
# where a tied head must be anyway).
HEAD_UNIT = False


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_checkpoint_wrapped_module", module)


def transformer_blocks(model: torch.nn.Module, flag: str) -> torch.nn.ModuleList:
    """The model's repeated blocks (`model.layers`, `transformer.h`, ...): the largest `nn.ModuleList` whose
    entries are all of one class. Found by shape, not by name, so any Hugging Face causal LM has one."""
    best, best_size = None, 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and len({type(_unwrapped(m)) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = module, size
    if best is None:
        raise ModelError(f"{flag}: {type(model).__name__} has no list of transformer blocks (an nn.ModuleList of one "
                         f"block class, as model.layers or transformer.h); train it without {flag}")
    return best


def _varlen_recompute():
    """checkpoint's context_fn: the recomputation in backward sees the batch's varlen regrouping, which the
    forward saw through a context variable that backward (another thread on CUDA, after the `with`) lacks."""
    return nullcontext(), varlen_batch(current_varlen_batch())


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """--activation-checkpointing: each block keeps only its input; backward recomputes the rest.

    torch's non-reentrant checkpoint wrapper, around every block in place; its state-dict hooks keep the
    parameter names of the plain model, so save_pretrained and from_pretrained see the usual keys.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    blocks = transformer_blocks(model, "--activation-checkpointing")
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                       context_fn=_varlen_recompute)


def fsdp_precision(precision: str, device: torch.device) -> str:
    """--precision under --fsdp: auto means bf16 on CUDA (fp32 on a CPU); fp16 is refused by the config.

    >>> fsdp_precision("auto", torch.device("cpu")), fsdp_precision("bf16", torch.device("cpu"))
    ('fp32', 'bf16')
    """
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def shard(loss_model, model: torch.nn.Module, autocast_dtype, device: torch.device) -> None:
    """fully_shard every block, then the root (`loss_model`: embeddings, final norm and the LM head go with
    it, so the label-only head reads the head weight the root gathered for its forward). With `HEAD_UNIT` an
    untied head is an FSDP unit of its own instead, gathered around the label-only head's call.

    On CUDA under bf16 the parameters are gathered in bf16 and gradients reduced in fp32; otherwise fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    bf16 = device.type == "cuda" and autocast_dtype == torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for block in transformer_blocks(model, "--fsdp"):
        fully_shard(block, mp_policy=policy)
    head = model.get_output_embeddings()
    if HEAD_UNIT and head.weight is not model.get_input_embeddings().weight:  # a tied head is the embedding
        head.label_head = loss_model.label_head  # the head's call becomes a forward of the head's unit
        fully_shard(head, mp_policy=policy, reshard_after_forward=False)  # its backward needs no weight
        register_fsdp_forward_method(head, "label_head")
        loss_model.label_head = head.label_head
    fully_shard(loss_model, mp_policy=policy)


def start_weights(model: torch.nn.Module, dist) -> dict | None:
    """Rank 0's weights (its model's state dict and unsaved buffers, on the CPU), taken before sharding; None
    on the other processes, whose model is empty (`train.model.empty_model`). First every process checks that
    all built the same model: the names, shapes and embedding padding rows of its parameters."""
    layout = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    layout += [getattr(m, "padding_idx", None) for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    if any(other != layout for other in dist.gather(layout)):
        raise ModelError("--fsdp: the processes built different models from --model; give every node the same "
                         "model folder and library versions")
    return {"state": model.state_dict(), "buffers": _unsaved_buffers(model)} if dist.main else None


def _unsaved_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers no state dict holds (Llama's rotary frequencies), in module order."""
    return [module._buffers[name] for module in model.modules() for name in sorted(module._non_persistent_buffers_set)
            if module._buffers.get(name) is not None]


def spread_weights(loss_model: torch.nn.Module, model: torch.nn.Module, weights: dict | None,
                   device: torch.device) -> None:
    """After sharding: the empty models get their shards (allocated on `device`), then every process takes its
    shards of rank 0's `weights` (broadcast from rank 0), and rank 0's buffers that no state dict holds (Llama's
    rotary frequencies), in module order. So no process but rank 0 ever holds the whole model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(p.is_meta for p in loss_model.parameters()):
        loss_model.to_empty(device=device)
    set_model_state_dict(model, weights["state"] if weights else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for i, buffer in enumerate(_unsaved_buffers(model)):
        if weights:
            buffer.copy_(weights["buffers"][i])
        torch.distributed.broadcast(buffer, src=0)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def rank_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This process's parameter, gradient and optimizer-state bytes (its shards under --fsdp)."""
    params = list(model.parameters())
    parameters = sum(_local(p).numel() * p.element_size() for p in params)
    gradients = sum(_local(p).numel() * p.element_size() for p in params if p.requires_grad)
    state = sum(_local(v).numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v) and v.dim() > 0)
    return {"parameters": parameters, "gradients": gradients, "optimizer": state,
            "parameter_numel": sum(_local(p).numel() for p in params)}


def equal_val_batches(batches: list, world_size: int, device: torch.device) -> int:
    """Pad this process's validation batches (in place) to the most any process has, with repeats that the
    caller does not count: every sharded forward gathers parameters with all processes. Returns its own count."""
    own = len(batches)
    count = torch.tensor([own], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    filler = batches[-1] if batches else np.arange(1)
    batches.extend([filler] * (int(count.item()) - own))
    return own


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole model's weights on rank 0's CPU (every process must call it): what best/ saves."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (GPT-2's embedding and LM head) arrive as separate copies: make them one tensor again, so
    # save_pretrained sees the sharing and writes the file a plain model's save writes.
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.replace("_checkpoint_wrapped_module.", ""))
    for tied in names.values():
        for name in tied[1:]:
            if name in state and tied[0] in state:
                state[name] = state[tied[0]]
    return state


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer into folder/dcp, each process its own shards (every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _single_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(Path(folder) / DCP_FOLDER))


def load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Model and optimizer from folder/dcp, resharded onto this run's processes (every process calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with _single_process_is_meant():
        dcp.load(state, checkpoint_id=str(Path(folder) / DCP_FOLDER))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


@contextmanager
def _single_process_is_meant():
    """DCP warns that it assumes one process whenever there is no process group: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / DCP_FOLDER / ".metadata").is_file()

"""Attention paths: which kernel computes attention, and the per-sample `varlen` path itself.

    --attention sdpa     transformers' SDPA; rows of several samples get a dense rows x 1 x L x L mask
    --attention eager    transformers' matmul + softmax (a reference)
    --attention varlen   per layer, the batch's samples regrouped into right-padded [samples, longest]
                         batches (up to three, by length) and run through causal SDPA (no mask: right padding is never seen by a
                         causal query), then scattered back; portable, CPU and CUDA
    --attention flash    transformers' flash_attention_2 driven by the position ids (CUDA + flash-attn),
                         else torch's own varlen kernel (torch.nn.attention.varlen, CUDA) fed with
                         the batch's cumulative sequence lengths
    --attention flex     transformers' flex_attention with a document-causal BlockMask, compiled;
                         torch 2.13 has no flex backward on CPU, so it trains on CUDA only
    --attention auto     flash where it runs, else varlen (printed once at start)

A run resolves its choice once, `resolve_attention(...) -> AttentionPlan`: the path taken, the
attn_implementation the model loads with, the per-batch builder of the path's inputs (which
`train.step.get_batch` calls), and the one-line reason when the path cannot run here (the device,
the precision, the model's attention dropout).

`varlen` reaches the model through transformers' AttentionInterface: the index tensors
(built once per batch, with numpy, by `varlen_index`; samples sorted by length and cut into
at most GROUPS passes, so a short sample is not padded to the batch's longest) are set for
the model call by `varlen_batch(index)`, and every layer's attention function reads them
there. They are not inputs of the model call: under --compile their sizes change with every
batch and would make torch.compile recompile; the attention function runs outside the
compiled graph (torch.compiler.disable), so the compiled parts see only the rows' shapes.

    >>> import numpy as np  # rows [3 | 2 | pad] and [4 | pad pad] of width 6
    >>> index = varlen_index(np.array([0, 3, 6]), np.array([3, 2, 4]), rows=2, width=6)
    >>> index.single_rows.tolist()  # row 1 holds one sample: its own causal pass
    [[6, 7, 8, 9, 10, 11]]
    >>> [g.tolist() for g in index.groups]  # row 0's samples, by length, one pass each
    [[[3, 4]], [[0, 1, 2]]]
"""
from __future__ import annotations

import contextvars
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from sftcli import ConfigError

# the names registered with transformers' AttentionInterface (never containing "flash": transformers would
# then look for a flash-attn kernel of that name)
VARLEN, FLEX, TORCH_FLASH = "sftpack_varlen", "sftpack_flex", "sftpack_torch_varlen"
# --attention -> transformers' attn_implementation. transformers' own flex_attention is not offered
# for GPT-2, so flex is ours too: the same flex kernel, its block mask built from the batch's samples.
IMPLEMENTATIONS = {"sdpa": "sdpa", "eager": "eager", "varlen": VARLEN, "flash": "flash_attention_2", "flex": FLEX}


class AttentionError(ConfigError):
    """An attention path that cannot run here, or cannot give what the options ask."""


def implementation(attention: str) -> str:
    """transformers' attn_implementation of a resolved --attention."""
    if attention == "flash" and importlib.util.find_spec("flash_attn") is None:
        return TORCH_FLASH
    return IMPLEMENTATIONS[attention]


@dataclass(frozen=True)
class AttentionPlan:
    """What a resolved --attention means for a run, decided once (`resolve_attention`).

    name: the path taken (`auto` resolved): sdpa, eager, varlen, flash or flex.
    implementation: transformers' attn_implementation, which the model is loaded with.
    inputs: the per-batch builder, `inputs(batch)` -> the attention inputs of a collated
        `shards.batch.Batch` beside its ids, positions and labels (host tensors, or None / ints).
    refusal: why this path cannot run here with these options (None: it can); `check()` raises it.
    """

    name: str
    implementation: str
    inputs: Callable[..., dict]
    refusal: str | None = None

    def check(self) -> "AttentionPlan":
        if self.refusal:
            raise AttentionError(self.refusal)
        return self


def _no_inputs(batch) -> dict:
    return {}


def _varlen_inputs(batch) -> dict:
    return {"varlen_index": varlen_index(batch.sequence_starts, batch.sequence_lengths, *batch.input_ids.shape)}


def _flex_inputs(batch) -> dict:
    documents = document_ids(batch.sequence_starts, batch.sequence_lengths, *batch.input_ids.shape)
    return {"flex_documents": torch.from_numpy(documents)}


def _torch_flash_inputs(batch) -> dict:
    bounds, longest = cumulative_lengths(document_ids(batch.sequence_starts, batch.sequence_lengths,
                                                      *batch.input_ids.shape))
    return {"flash_cu_seqlens": torch.from_numpy(bounds), "flash_max_length": longest}


_INPUTS = {VARLEN: _varlen_inputs, FLEX: _flex_inputs, TORCH_FLASH: _torch_flash_inputs}


def resolve_attention(choice: str, device: torch.device, *, training: bool = True, isolation: bool = True,
                      flatten: bool = False, precision: torch.dtype | None = None,
                      dropout: float = 0.0) -> AttentionPlan:
    """The plan of the path a run takes (`auto` resolved), with the one clear line why it cannot run here, if so.

    `precision`: the autocast dtype (None: fp32); `dropout`: the model's attention dropout
    (`attention_dropout(config)`), which the flex and torch-flash kernels do not have.

    >>> plan = resolve_attention("auto", torch.device("cpu"))
    >>> plan.name, plan.implementation, plan.refusal
    ('varlen', 'sftpack_varlen', None)
    """
    flash_ready = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    torch_flash_ready = device.type == "cuda" and importlib.util.find_spec("torch.nn.attention.varlen") is not None
    # auto: flash isolates samples only within one flattened sequence (transformers reads packing from
    # position ids at batch size 1 only); varlen isolates them in any batch.
    name = choice if choice != "auto" else "flash" if flash_ready and (flatten or not isolation) else "varlen"
    refusal = None
    if choice == "flash" and not (flash_ready or torch_flash_ready):
        refusal = ("--attention flash: needs a CUDA device and the flash-attn package (pip install flash-attn) or a "
                   "torch with torch.nn.attention.varlen; use --attention varlen, the same per-sample attention")
    elif choice == "flash" and flash_ready and isolation and not flatten:
        refusal = ("--attention flash: isolates samples only in one flattened sequence (transformers reads packing "
                   "from position ids at batch size 1); add --flatten, or use --attention varlen")
    elif choice == "flex" and training and device.type != "cuda":
        refusal = ("--attention flex: torch 2.13's flex_attention has no backward on CPU, so it cannot train here "
                   "(it can validate); use --attention varlen, the same per-sample attention")
    elif implementation(name) in (FLEX, TORCH_FLASH) and dropout > 0:
        refusal = (f"--attention {name}: its kernel has no attention dropout, and the model uses {dropout}; pass "
                   f"--dropout 0, or use --attention varlen")
    elif name == "flash" and precision is None:
        refusal = ("--attention flash: flash kernels compute in fp16/bf16 only; use --precision auto, fp16 or bf16, "
                   "or --attention varlen")
    return AttentionPlan(name, implementation(name), _INPUTS.get(implementation(name), _no_inputs), refusal)


def register_attention() -> None:
    """Make `sftpack_varlen` and `sftpack_flex` known to transformers as attn_implementation (idempotent).

    No mask function is registered for them, so transformers builds no mask at all.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionInterface.register(FLEX, flex_attention_forward)
    AttentionInterface.register(TORCH_FLASH, torch_flash_attention_forward)


def attention_dropout(config) -> float:
    """The model's attention-probability dropout (GPT-2 and Llama spell it differently)."""
    return float(getattr(config, "attn_pdrop", None) or getattr(config, "attention_dropout", None) or 0.0)


def document_ids(starts: np.ndarray, lengths: np.ndarray, rows: int, width: int) -> np.ndarray:
    """(rows, width) id of the sequence each position belongs to; padding gets -1 (its own document).

    >>> document_ids(np.array([0, 2, 4]), np.array([2, 1, 3]), rows=2, width=4).tolist()
    [[0, 0, 1, -1], [2, 2, 2, -1]]
    """
    ids = np.full(rows * width, -1, dtype=np.int64)
    ids[np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths,
                                                                                 lengths)] = np.repeat(
        np.arange(len(starts)), lengths)
    return ids.reshape(rows, width)


def flex_block_mask(documents: torch.Tensor):
    """The document-causal BlockMask of a batch: a query sees earlier keys of its own sequence."""
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q, kv):
        return (documents[b, q] == documents[b, kv]) & (q >= kv)

    rows, width = documents.shape
    return create_block_mask(document_causal, rows, None, width, width, device=documents.device)


def cumulative_lengths(documents: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat spans of equal document id (each sample, each padding run) as int32 cumulative lengths, and the longest.

    >>> cumulative_lengths(np.array([[0, 0, 1, -1], [2, 2, 2, -1]]))
    (array([0, 2, 3, 4, 7, 8], dtype=int32), 3)
    """
    flat = documents.ravel()
    width = documents.shape[1]
    cuts = np.flatnonzero((np.diff(flat) != 0) | (np.arange(1, len(flat)) % width == 0)) + 1
    bounds = np.concatenate([[0], cuts, [len(flat)]]).astype(np.int32)
    return bounds, int(np.diff(bounds).max())


def torch_flash_attention_forward(module, query, key, value, attention_mask, *, dropout: float = 0.0,
                                  scaling: float | None = None, flash_cu_seqlens=None, flash_max_length=None,
                                  **kwargs):
    """transformers' attention-function signature, through torch's varlen flash kernel (CUDA).

    All tokens of the batch in one flat sequence, cut into the batch's samples (and padding runs).
    """
    from torch.nn.attention.varlen import varlen_attn

    if flash_cu_seqlens is None:
        raise ValueError("sftpack_torch_varlen attention needs the batch's flash_cu_seqlens (train.step.get_batch)")
    if dropout > 0:
        raise ValueError("sftpack_torch_varlen attention has no attention dropout")
    rows, heads, width, dim = query.shape
    flat = [x.transpose(1, 2).reshape(rows * width, x.shape[1], dim) for x in (query, key, value)]
    out = varlen_attn(*flat, flash_cu_seqlens, flash_cu_seqlens, flash_max_length, flash_max_length,
                      scale=scaling, window_size=(-1, 0), enable_gqa=bool(key.shape[1] != heads))
    return out.view(rows, width, heads, dim), None


_compiled_flex = None


def flex_attention_forward(module, query, key, value, attention_mask, *, dropout: float = 0.0,
                           scaling: float | None = None, flex_block_mask=None, **kwargs):
    """transformers' attention-function signature, through torch's flex_attention (compiled on CUDA).

    flex_attention has no attention dropout: the loop refuses models that use it.
    """
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if flex_block_mask is None:
        raise ValueError("sftpack_flex attention needs the batch's flex_block_mask (train.head.LabelLossModel)")
    kernel = flex_attention
    if query.is_cuda:  # uncompiled, flex_attention is a slow reference; CPU (validation only) keeps it
        _compiled_flex = _compiled_flex or torch.compile(flex_attention)
        kernel = _compiled_flex
    out = kernel(query, key, value, block_mask=flex_block_mask, scale=scaling,
                 enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


GROUPS = 3  # at most this many regrouped batches per layer: samples sorted by length, cut where it saves most


@dataclass(frozen=True)
class VarlenIndex:
    """Where a batch's attention sequences go in the regrouped batches, and back.

    single_rows: (rows, width) flat token index (row * width + column) of the rows holding one
        sequence; they keep their own causal pass over the row (no regrouping).
    groups: for each regrouped batch, (samples, longest) flat token index feeding its slots: the
        other rows' sequences, sorted by length and cut into up to GROUPS batches so that short
        samples are not padded to the longest one; slots past a sequence's end read the zero
        token (index rows * width), which a causal query never sees.
    token_slot: for each flat token position of the batch, its slot in the concatenation of
        single_rows and groups, or the zero slot (one past the last) for padding outside them.
    Sizes live in the tensors' shapes only, so torch.compile treats them as dynamic sizes.
    """

    single_rows: np.ndarray | torch.Tensor
    groups: tuple
    token_slot: np.ndarray | torch.Tensor

    @property
    def samples(self) -> int:
        """Sequences regrouped (not counting the single rows)."""
        return sum(int(g.shape[0]) for g in self.groups)

    @property
    def squares(self) -> int:
        """Query x key slots the causal kernels are given: sum of count x length^2 over the passes."""
        return sum(int(g.shape[0]) * int(g.shape[1]) ** 2 for g in (self.single_rows, *self.groups))

    def to(self, device: torch.device, non_blocking: bool = False) -> "VarlenIndex":
        return self._map(lambda a: torch.as_tensor(a).to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "VarlenIndex":
        return self._map(lambda a: torch.as_tensor(a).pin_memory())

    def _map(self, f) -> "VarlenIndex":
        return VarlenIndex(f(self.single_rows), tuple(map(f, self.groups)), f(self.token_slot))


def length_groups(lengths: np.ndarray, most: int = GROUPS) -> list[int]:
    """Cut points of ascending `lengths` into at most `most` groups, least total count x longest^2.

    The cost of a group is what causal attention over it computes when every sample is padded
    to the group's longest. Exact, by dynamic programming over the cut positions (numpy, n^2).

    >>> length_groups(np.array([60, 62, 64, 200, 210]))  # [60 62 64] [200] [210]
    [3, 4]
    >>> length_groups(np.array([5, 5, 5]))
    []
    """
    n = len(lengths)
    square = lengths.astype(np.float64) ** 2
    counts = np.arange(n + 1)[None, :] - np.arange(n + 1)[:, None]  # [i, j]: samples i..j-1
    span = np.where(counts > 0, counts * np.concatenate([[0.0], square])[None, :], np.inf)
    best, cuts = span[0].copy(), [[] for _ in range(n + 1)]  # best[j]: least cost of the first j, one group
    for _ in range(most - 1):
        total = best[:, None] + span  # [i, j]: first i samples as before, then one group i..j-1
        choice = total.argmin(axis=0)
        better = total[choice, np.arange(n + 1)] < best
        cuts = [cuts[choice[j]] + [int(choice[j])] if better[j] else cuts[j] for j in range(n + 1)]
        best = np.where(better, total[choice, np.arange(n + 1)], best)
    return cuts[n]


def varlen_index(starts: np.ndarray, lengths: np.ndarray, rows: int, width: int) -> VarlenIndex | None:
    """The regrouping of one batch, from its sequences' flat start indices and lengths (numpy, once per batch).

    None when no row holds two sequences: plain causal attention over the rows is then exact.
    """
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    row = starts // width
    per_row = np.bincount(row, minlength=rows)
    if per_row.max(initial=0) <= 1:
        return None
    zero = rows * width
    single = np.flatnonzero(per_row == 1)
    single_rows = single[:, None] * width + np.arange(width)
    token_slot = np.full(rows * width, -1, dtype=np.int64)
    token_slot[single_rows.ravel()] = np.arange(single_rows.size)
    grouped = per_row[row] > 1
    order = np.argsort(lengths[grouped], kind="stable")
    g_starts, g_lengths = starts[grouped][order], lengths[grouped][order]
    groups, slot = [], single_rows.size
    for part in np.split(np.arange(len(g_starts)), length_groups(g_lengths)):
        p_starts, p_lengths = g_starts[part], g_lengths[part]
        longest = int(p_lengths[-1])
        column = np.arange(longest)
        groups.append(np.where(column < p_lengths[:, None], p_starts[:, None] + column, zero))
        within = np.arange(int(p_lengths.sum())) - np.repeat(np.cumsum(p_lengths) - p_lengths, p_lengths)
        token_slot[np.repeat(p_starts, p_lengths) + within] = slot + np.repeat(np.arange(len(part)) * longest,
                                                                              p_lengths) + within
        slot += len(part) * longest
    token_slot[token_slot < 0] = slot  # the zero slot
    return VarlenIndex(single_rows, tuple(groups), token_slot)


def _causal(query, key, value, dropout: float, scaling: float | None) -> torch.Tensor:
    """Causal SDPA, [n, heads, length, dim] in and [n, length, heads, dim] out.

    Both flags are plain Python bools: a size comparison passed as is would be a SymBool under
    torch.compile, which SDPA refuses (a graph break). A length-1 causal row is just itself.
    """
    gqa = bool(key.shape[1] != query.shape[1])
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling,
                                         enable_gqa=gqa)
    return out.transpose(1, 2)


class _Regroup(torch.autograd.Function):
    """Tokens (n, heads, dim) -> each pass's slots (count, length, heads, dim), and the way back.

    Written by hand so that both directions are gathers: every real token has exactly one slot,
    so the gradient of a gather is the inverse gather, and autograd's scatter-add (with its
    zero-filled buffer and the many writes to the zero slot) is not needed.
    """

    @staticmethod
    def forward(ctx, tokens, token_slot, *sources):
        ctx.save_for_backward(token_slot)
        padded = torch.cat([tokens, tokens.new_zeros(1, *tokens.shape[1:])])
        return tuple(padded.index_select(0, s.flatten()).view(*s.shape, *tokens.shape[1:]) for s in sources)

    @staticmethod
    def backward(ctx, *grads):
        (token_slot,) = ctx.saved_tensors
        flat = torch.cat([g.flatten(0, 1) for g in grads] + [grads[0].new_zeros(1, *grads[0].shape[2:])])
        return (flat.index_select(0, token_slot), None) + (None,) * len(grads)


class _Ungroup(torch.autograd.Function):
    """Each pass's output slots -> the batch's tokens (the zero slot for padding), and the way back."""

    @staticmethod
    def forward(ctx, token_slot, sources, *outputs):
        ctx.sources = sources
        flat = torch.cat([o.flatten(0, 1) for o in outputs] + [outputs[0].new_zeros(1, *outputs[0].shape[2:])])
        return flat.index_select(0, token_slot)

    @staticmethod
    def backward(ctx, grad):
        padded = torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])])  # slots past a sequence get no gradient
        return (None, None) + tuple(padded.index_select(0, s.flatten()).view(*s.shape, *grad.shape[1:])
                                    for s in ctx.sources)


_BATCH_INDEX: contextvars.ContextVar[VarlenIndex | None] = contextvars.ContextVar("varlen_index", default=None)


def current_varlen_batch() -> VarlenIndex | None:
    """The regrouping `varlen_batch` set for the model call running now (None outside one)."""
    return _BATCH_INDEX.get()


@contextmanager
def varlen_batch(index: VarlenIndex | None):
    """The batch's regrouping, for every varlen attention call of the model call inside."""
    token = _BATCH_INDEX.set(index)
    try:
        yield
    finally:
        _BATCH_INDEX.reset(token)


@torch.compiler.disable
def varlen_attention_forward(module, query, key, value, attention_mask, *, dropout: float = 0.0,
                             scaling: float | None = None, varlen_index: VarlenIndex | None = None, **kwargs):
    """transformers' attention-function signature: [rows, heads, length, dim] in, ([rows, length, heads, dim], None) out.

    `varlen_index`: the batch's regrouping, by default the one `varlen_batch` set. Without one
    (or with a mask or a cache: generation) every row is one causal sequence, exactly
    transformers' SDPA path.
    """
    varlen_index = varlen_index if varlen_index is not None else _BATCH_INDEX.get()
    if varlen_index is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    rows, heads, width, dim = query.shape
    index = varlen_index
    sources = ((index.single_rows,) if index.single_rows.shape[0] else ()) + tuple(index.groups)
    # each of q, k, v: (rows * width, its heads, dim) -> per pass (count, length, heads, dim)
    passes = zip(*(_Regroup.apply(x.transpose(1, 2).reshape(rows * width, x.shape[1], dim), index.token_slot,
                                  *sources) for x in (query, key, value)))
    outputs = [_causal(*(x.transpose(1, 2) for x in qkv), dropout, scaling) for qkv in passes]
    out = _Ungroup.apply(index.token_slot, sources, *outputs)
    return out.view(rows, width, heads, dim), None

"""Attention paths: which kernel computes attention, and the per-sample `varlen` path itself.

    --attention sdpa     transformers' SDPA; rows of several samples get a dense rows x 1 x L x L mask
    --attention eager    transformers' matmul + softmax (a reference)
    --attention varlen   per layer, the batch's samples regrouped into a right-padded [samples, longest]
                         batch and run through causal SDPA (no mask: right padding is never seen by a
                         causal query), then scattered back; portable, CPU and CUDA
    --attention flash    transformers' flash_attention_2 driven by the position ids (CUDA + flash-attn),
                         else torch's own varlen kernel (torch.nn.attention.varlen, CUDA) fed with
                         the batch's cumulative sequence lengths
    --attention flex     transformers' flex_attention with a document-causal BlockMask, compiled;
                         torch 2.13 has no flex backward on CPU, so it trains on CUDA only
    --attention auto     flash where it runs, else varlen (printed once at start)

`varlen` reaches the model through transformers' AttentionInterface: the index tensors
(built once per batch, with numpy, by `varlen_index`) travel as the `varlen_index`
keyword of the model call, which GPT-2 and Llama-type models forward to every layer's
attention function.

    >>> import numpy as np
    >>> index = varlen_index(np.array([0, 3, 8]), np.array([3, 2, 4]), rows=2, width=5)
    >>> index.single_rows.tolist(), index.samples, index.longest
    ([1], 2, 3)
    >>> index.grouped_source.tolist()  # slots of samples (0..2) and (3..4); a short sample's extra slot repeats its last token
    [[0, 1, 2], [3, 4, 4]]
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

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


def resolve_attention(choice: str, device: torch.device, training: bool, isolation: bool, flatten: bool) -> str:
    """The path a run takes (`auto` resolved); one clear line where the choice cannot run here."""
    flash_ready = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    torch_flash_ready = device.type == "cuda" and importlib.util.find_spec("torch.nn.attention.varlen") is not None
    if choice == "auto":
        # flash isolates samples only within one flattened sequence (transformers reads packing from
        # position ids at batch size 1 only); varlen isolates them in any batch.
        return "flash" if flash_ready and (flatten or not isolation) else "varlen"
    if choice == "flash":
        if not (flash_ready or torch_flash_ready):
            raise AttentionError("--attention flash: needs a CUDA device and the flash-attn package (pip install "
                                 "flash-attn) or a torch with torch.nn.attention.varlen; use --attention varlen, "
                                 "the same per-sample attention")
        if flash_ready and isolation and not flatten:
            raise AttentionError("--attention flash: isolates samples only in one flattened sequence "
                                 "(transformers reads packing from position ids at batch size 1); add --flatten, "
                                 "or use --attention varlen")
    if choice == "flex" and training and device.type != "cuda":
        raise AttentionError("--attention flex: torch 2.13's flex_attention has no backward on CPU, so it cannot "
                             "train here (it can validate); use --attention varlen, the same per-sample attention")
    return choice


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


def torch_flash_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
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


def flex_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
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


@dataclass(frozen=True)
class VarlenIndex:
    """Where a batch's attention sequences go in the regrouped batch, and back.

    single_rows: rows holding one sequence; they skip regrouping (causal SDPA over the row).
    grouped_source: (samples, longest) flat token index (row * width + column) feeding each
        slot of the regrouped batch of the other rows' sequences; slots past a sequence's
        end repeat its last token (a causal query never sees later slots).
    output_source: for each flat token position of the batch, its row in
        cat(single-row outputs, regrouped outputs, one zero row); padding after a row's
        last sequence reads the zero row (its labels are ignored).
    Sizes live in the tensors' shapes only, so torch.compile treats them as dynamic sizes.
    """

    single_rows: np.ndarray | torch.Tensor
    grouped_source: np.ndarray | torch.Tensor
    output_source: np.ndarray | torch.Tensor

    @property
    def samples(self) -> int:
        return int(self.grouped_source.shape[0])

    @property
    def longest(self) -> int:
        return int(self.grouped_source.shape[1])

    def to(self, device: torch.device, non_blocking: bool = False) -> "VarlenIndex":
        return VarlenIndex(*(torch.as_tensor(a).to(device, non_blocking=non_blocking) for a in self._arrays()))

    def pin_memory(self) -> "VarlenIndex":
        return VarlenIndex(*(torch.as_tensor(a).pin_memory() for a in self._arrays()))

    def _arrays(self) -> tuple:
        return self.single_rows, self.grouped_source, self.output_source


def varlen_index(starts: np.ndarray, lengths: np.ndarray, rows: int, width: int) -> VarlenIndex | None:
    """The regrouping of one batch, from its sequences' flat start indices and lengths (numpy, once per batch).

    None when no row holds two sequences: plain causal attention over the rows is then exact.
    """
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    row = starts // width
    per_row = np.bincount(row, minlength=rows)
    if per_row.max(initial=0) <= 1:
        return None
    single_rows = np.flatnonzero(per_row == 1)
    grouped = per_row[row] > 1
    g_starts, g_lengths = starts[grouped], lengths[grouped]
    samples, longest = len(g_starts), int(g_lengths.max())
    grouped_source = g_starts[:, None] + np.minimum(np.arange(longest), g_lengths[:, None] - 1)
    single_slots = len(single_rows) * width
    output_source = np.full(rows * width, single_slots + samples * longest, dtype=np.int64)  # the zero row
    output_source[(single_rows[:, None] * width + np.arange(width)).ravel()] = np.arange(single_slots)
    within = np.arange(int(g_lengths.sum())) - np.repeat(np.cumsum(g_lengths) - g_lengths, g_lengths)
    output_source[np.repeat(g_starts, g_lengths) + within] = (
        single_slots + np.repeat(np.arange(samples) * longest, g_lengths) + within)
    return VarlenIndex(single_rows, grouped_source, output_source)


def _causal(query, key, value, dropout: float, scaling: float | None) -> torch.Tensor:
    """Causal SDPA, [n, heads, length, dim] in and [n * length, heads, dim] out.

    Both flags are plain Python bools: a size comparison passed as is would be a SymBool under
    torch.compile, which SDPA refuses (a graph break). A length-1 causal row is just itself.
    """
    gqa = bool(key.shape[1] != query.shape[1])
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True, scale=scaling,
                                         enable_gqa=gqa)
    return out.transpose(1, 2).reshape(-1, query.shape[1], query.shape[3])


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, varlen_index: VarlenIndex | None = None, **kwargs):
    """transformers' attention-function signature: [rows, heads, length, dim] in, ([rows, length, heads, dim], None) out.

    Without an index (or with a mask or a cache: generation) every row is one causal sequence,
    exactly transformers' SDPA path.
    """
    if varlen_index is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    rows, heads, width, dim = query.shape
    index = varlen_index
    parts = []
    if index.single_rows.numel():
        parts.append(_causal(*(x.index_select(0, index.single_rows) for x in (query, key, value)),
                             dropout, scaling))
    source = index.grouped_source
    grouped = [x.transpose(1, 2).reshape(rows * width, x.shape[1], dim).index_select(0, source.flatten())
               .view(source.shape[0], source.shape[1], x.shape[1], dim).transpose(1, 2) for x in (query, key, value)]
    parts.append(_causal(*grouped, dropout, scaling))
    parts.append(query.new_zeros(1, heads, dim))
    out = torch.cat(parts).index_select(0, index.output_source).view(rows, width, heads, dim)
    return out, None

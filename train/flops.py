"""Model FLOPs of a training step, and MFU against the device's measured matmul peak.

As PaLM (appendix B) and nanoGPT's `estimate_mfu`, with two corrections for what this trainer computes:

    flops = 6 * N_body * tokens + 6 * N_head * supervised_tokens
            + 12 * n_layer * d_model * (sum over attended squares of length^2)

N_body: the matmul parameters outside the LM head (no position embeddings; the input embedding only
where it is the head's weight, tied); the label-only head (train.head) runs on supervised tokens
only, so N_head counts there and nowhere else. Padding tokens add nothing: they are computed, not
used. The squares are what each attention kernel computes: sdpa and eager (a dense mask, or causal
over a padded row) every row's full width^2; varlen width^2 for a row of one sample and, in each
of its passes, the pass's longest^2 per sample; flash and flex each sample's own length^2.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def parameter_counts(model) -> tuple[int, int]:
    """(N_body, N_head): the matmul parameters of everything but the LM head, and of the head."""
    head = model.get_output_embeddings().weight
    embeddings = [model.get_input_embeddings().weight]
    positions = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2's learned positions
    embeddings += [positions.weight] if positions is not None else []
    lookups = {id(w) for w in embeddings if w is not head}  # a lookup table does no matmul
    body = sum(p.numel() for p in model.parameters() if id(p) not in lookups and p is not head)
    return body, head.numel()


def attended_squares(inputs: dict, batch, attention: str) -> float:
    """Sum of length^2 over what the attention kernel computes for this batch."""
    rows, width = batch.input_ids.shape
    index = inputs.get("varlen_index")
    if attention in ("sdpa", "eager") or (attention == "varlen" and index is None):
        return float(rows * width**2)
    if attention == "varlen":
        return float(index.squares)
    return float((batch.sequence_lengths.astype(np.float64) ** 2).sum())


def step_flops(counts: tuple[int, int], config, tokens: int, supervised: int, squares: float) -> float:
    """Training FLOPs (forward and backward) of `tokens` real tokens (see the module docstring).

    >>> from types import SimpleNamespace
    >>> gpt2 = SimpleNamespace(num_hidden_layers=12, hidden_size=768)  # GPT-2 124M: N = 123,653,376 (nanoGPT's)
    >>> step_flops((85_056_000, 38_597_376), gpt2, 1024, 1024, 1024**2) / 1024 / 1e9  # 6N + 12*L*H*Q*T per token
    0.855166464
    """
    body, head = counts
    return 6.0 * (body * tokens + head * supervised) + 12.0 * config.num_hidden_layers * config.hidden_size * squares


def measured_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a size x size matmul in `dtype`, the best of `repeats` after 3 warm-ups: what MFU divides by
    (a datasheet's peak is rarely reached; this is the peak the device gives here)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    seconds = []
    for _ in range(3 + repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / min(seconds[3:])

"""Model FLOPs of a training step, and MFU: against the device's datasheet peak, and its measured matmul peak.

As PaLM (appendix B) and nanoGPT's `estimate_mfu`: model FLOPs are what the model needs, whatever kernel
runs it, so two runs on two kernels count the same work and the faster one shows the higher MFU:

    flops = 6 * N_body * tokens + 6 * N_head * supervised_tokens
            + 12 * n_layer * d_model * (sum over samples of length^2)

N_body: the matmul parameters outside the LM head (no position embeddings; the input embedding only
where it is the head's weight, tied); the label-only head (train.head) runs on supervised tokens
only, so N_head counts there and nowhere else. The attention term is PaLM's 12 * L * H * Q * T per
token on each sample's own T (a segment of a row: a sample, or the piece of one that a packed row
holds): padding, masked pairs and cross-sample pairs (--isolation off) count nothing, whatever the
kernel computed.

`mfu` divides by the datasheet's dense peak of the device in the step's precision (`DATASHEET_PEAKS`,
as nanoGPT divides by the A100's 312 TFLOP/s; unknown devices: None); `mfu_measured_peak` by the
matmul peak measured at start (`measured_peak_flops`), which is lower and so gives a higher MFU.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

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


def attended_squares(batch) -> float:
    """Sum of length^2 over the batch's samples (segments), whatever the attention kernel computes.

    >>> from shards.batch import collate
    >>> attended_squares(collate([[5, 6, 7, 8, 9], [3, 4]], [[1] * 5, [1, 1]], [[3, 2], [2]], 0, isolation=False))
    17.0
    """
    return float((batch.segment_lengths.astype(np.float64) ** 2).sum())


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


@dataclass(frozen=True)
class Datasheet:
    """A device's dense (no sparsity) peak TFLOP/s per step precision, and where the figures come from."""

    match: str  # a substring of torch.cuda.get_device_name(), upper case
    half: float  # fp16 and bf16 tensor cores, fp32 accumulate
    tf32: float  # fp32 steps: the loop turns TF32 matmuls on (train.setup)
    source: str


# Dense figures: half of each datasheet's "with sparsity" figure where it gives only that one. A name
# matches as whole words of torch.cuda.get_device_name() (A10 is not A100 nor A10G); the first match wins,
# so the specific variants come before the SXM default.
DATASHEET_PEAKS = (
    Datasheet("H100 PCIE", 756.5, 378.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe column"),
    Datasheet("H100 NVL", 835.5, 417.5, "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL column"),
    Datasheet("H100", 989.5, 494.5, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column"),
    Datasheet("H200 NVL", 835.5, 417.5, "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL column"),
    Datasheet("H200", 989.5, 494.5, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column"),
    Datasheet("A100", 312.0, 156.0, "NVIDIA A100 Tensor Core GPU datasheet (nanoGPT's estimate_mfu: 312)"),
    Datasheet("L40S", 362.05, 183.0, "NVIDIA L40S GPU datasheet"),
    Datasheet("L4", 121.0, 60.0, "NVIDIA L4 Tensor Core GPU datasheet"),
    Datasheet("A10", 125.0, 62.5, "NVIDIA A10 Tensor Core GPU datasheet"),
    Datasheet("RTX 4090", 165.2, 82.6, "NVIDIA Ada GPU architecture whitepaper, appendix A (GeForce RTX 4090, "
                                       "FP32 accumulate)"),
)


def datasheet_peak_flops(device_name: str, dtype: torch.dtype | None) -> float | None:
    """FLOP/s of the device's datasheet in the step's precision (None: fp32 autocast off); None if unknown.

    >>> datasheet_peak_flops("NVIDIA A100-SXM4-80GB", torch.bfloat16) / 1e12, datasheet_peak_flops("NVIDIA A10G", None)
    (312.0, None)
    """
    name = device_name.upper()
    sheet = next((d for d in DATASHEET_PEAKS if re.search(rf"\b{re.escape(d.match)}\b", name)), None)
    if sheet is None:
        return None
    return (sheet.half if dtype in (torch.float16, torch.bfloat16) else sheet.tf32) * 1e12

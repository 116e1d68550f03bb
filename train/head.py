"""The loss: the LM head applied only where labels are, in chunks, and THE label shift.

The model's backbone gives hidden states (rows, length, width). `shift_labels` pairs
position t with label t+1 (the one place the shift happens); only the positions whose
shifted label is not IGNORE_INDEX go through the head, a chunk at a time, so no
rows x length x vocab tensor ever exists: neither the logits of unlabelled positions,
nor the fp32 copy the loss takes, nor their gradients. In training the chunk's
gradients are computed in the same pass (the loss is a sum, so its gradient is known
up to one scalar), so no chunk's logits are kept for backward either.

    >>> shift_labels(torch.tensor([[-100, 5, 6, -100]])).tolist()
    [[5, 6, -100, -100]]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from shards.format import IGNORE_INDEX
from train.attention import flex_block_mask, varlen_batch
from train.model import ModelError

# Labelled positions per head chunk, by device. On a CPU each chunk streams the whole head weight
# three times (logits, both gradients: 154 MB each for GPT-2 124M), so chunks too small are bound by
# memory; too large, the fp32 logits (256 x 50k: 51 MB) leave the cache. 256 measured fastest for the
# 124M shape (~1.2x over 128) and as fast as any for `tiny`; a GPU wants fewer, larger launches.
CHUNK_POSITIONS = {"cpu": 256, "cuda": 1024}


def chunks(count: int, device: torch.device) -> list[slice]:
    """The head's chunks of `count` labelled positions on `device`.

    >>> chunks(600, torch.device("cpu"))
    [slice(0, 256, None), slice(256, 512, None), slice(512, 600, None)]
    """
    size = CHUNK_POSITIONS.get(device.type, CHUNK_POSITIONS["cuda"])
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """THE label shift: entry t becomes the label at t+1 (IGNORE_INDEX after the last token).

    Labels arrive unshifted from `shards.batch.collate`; the model is never given labels.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of full logits, fp32, shape (rows, length); ignored labels give 0.

    The full-head reference the label-only head is tested against.
    """
    shifted = shift_labels(labels)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="none")
    return losses.view(labels.shape)


def labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the positions that predict a label, and those labels (shifted)."""
    targets = shift_labels(labels).flatten()
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return hidden.flatten(0, 1).index_select(0, keep), targets.index_select(0, keep)


def head_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of `hidden @ weight.T` against `targets`, chunk by chunk."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedHeadLoss.apply(hidden, weight, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for *_, loss in _softmax_chunks(hidden, weight, targets):
        total += loss
    return total


def _softmax_chunks(hidden, weight, targets):
    """Per chunk: (slice, its hidden states, its targets, its fp32 softmax, its summed cross-entropy).

    The softmax is computed in place of the chunk's logits: one fused pass, one chunk alive (logsumexp
    and then exp measured ~3x slower on CPU, and they allocate); log Z = top - log p(top), exact and safe
    since p(top) >= 1/vocab. In fp32 every chunk reuses one buffer, so the caller must be done with a
    chunk's softmax before asking for the next.
    """
    in_place = _matmul_dtype(hidden) == hidden.dtype == weight.dtype == torch.float32
    spans = chunks(len(targets), hidden.device)
    buffer = hidden.new_empty(spans[0].stop, weight.shape[0]) if in_place and spans else None
    for chunk in spans:
        h, target = hidden[chunk], targets[chunk]
        logits = torch.mm(h, weight.T, out=buffer[:len(target)]) if in_place else (h @ weight.T).float()
        target_logit = logits.gather(1, target[:, None]).squeeze(1)
        top = logits.amax(1)  # amax, not max: finding the indices too measured ~5x slower on CPU
        probabilities = torch.softmax(logits, 1, out=logits)
        log_z = top - probabilities.amax(1).log()  # the top logit's probability is the largest one
        yield chunk, h, target, probabilities, (log_z - target_logit).sum()


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss and its gradients in one pass over chunks (as Liger's fused linear cross-entropy).

    d(sum of CE)/d(logits) = softmax - one_hot: computed per chunk in fp32, then taken
    through the head's matmul in the compute dtype (autocast's, as the full head would).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        grad_hidden = torch.empty_like(hidden)  # every chunk writes its own rows
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        compute = _matmul_dtype(hidden)
        for chunk, h, target, grad_logits, loss in _softmax_chunks(hidden, weight, targets):
            total += loss
            grad_logits[torch.arange(len(target), device=target.device), target] -= 1
            grad_logits = grad_logits.to(compute)  # as the full head's backward: through .float(), then its matmul
            grad_hidden[chunk] = grad_logits @ weight.to(compute)
            if compute == torch.float32:
                grad_weight.addmm_(grad_logits.T, h)  # accumulated in place: no vocab x width temporary
            else:
                grad_weight += (grad_logits.T @ h.to(compute)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, (grad_weight * grad_total).to(ctx.weight_dtype), None


def _matmul_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype autocast gives a matmul here (the tensor's own outside autocast)."""
    device = tensor.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensor.dtype


class LabelLossModel(torch.nn.Module):
    """The model as the loop trains and validates it: backbone, label-only head, summed token loss.

    DDP wraps this module (so its forward hooks see the whole step); `compile` compiles
    the backbone only (the head loops over a data-dependent number of chunks).
    """

    def __init__(self, model, compile: bool = False):  # noqa: A002 - mirrors the --compile option
        super().__init__()
        self.model = model
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear) or head.bias is not None or getattr(
                model.config, "final_logit_softcapping", None):
            raise ModelError(f"{type(model).__name__}: the label-only head needs a bias-free linear LM head "
                             "without logit soft-capping")
        backbone = model.base_model
        # Not a submodule: its parameters are the model's, registered once through `self.model`.
        # dynamic: one graph for every padded width (the varlen index is no input of it).
        object.__setattr__(self, "backbone", torch.compile(backbone, dynamic=True) if compile else backbone)

    def forward(self, input_ids, position_ids, labels, flex_documents=None, varlen_index=None,
                **attention_inputs) -> torch.Tensor:
        """`attention_inputs`: what `train.step.get_batch` built for the attention path (flash_cu_seqlens, ...)."""
        extra = {k: v for k, v in attention_inputs.items() if v is not None}
        if flex_documents is not None:
            extra["flex_block_mask"] = flex_block_mask(flex_documents)
        with varlen_batch(varlen_index):  # not a model input: see train/attention.py
            hidden = self.backbone(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                   **extra).last_hidden_state
        return self.label_head(*labelled(hidden, labels))

    def label_head(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed loss of the labelled positions through the LM head's weight (under --fsdp with the head an
        FSDP unit of its own, train/fsdp.py makes this call gather that unit's weight)."""
        return head_loss(hidden, targets, self.model.get_output_embeddings().weight)

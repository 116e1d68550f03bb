"""The invariant between modes: an isolated concat row gives each sample the loss it has alone.

GPT-2 has learned absolute positions, so isolation needs both halves: positions
that restart at every segment and attention blocked between segments.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train_helpers import PAD, chatml_tokenizer, pack, synthetic_samples
from shards.batch import collate
from train.head import token_losses
from train.model import load_model


def forward(model, inputs: dict) -> torch.Tensor:
    """Full logits of a collated batch: no attention mask and no cache, so transformers reads a new
    sequence wherever the position ids restart (with a cache or a 2-D mask it would not look at them)."""
    return model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits


def per_token_losses(model, rows: list, isolation: bool) -> np.ndarray:
    batch = collate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], PAD, isolation=isolation)
    inputs = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "position_ids")}
    with torch.no_grad():
        losses = token_losses(forward(model, inputs), torch.from_numpy(batch.labels))
    return losses.numpy()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_isolated_concat_rows_give_the_losses_of_padding_rows(attention):
    torch.manual_seed(0)
    model = load_model("tiny", chatml_tokenizer(), seed=0, attention=attention).eval()  # fp32, CPU, no dropout
    samples = synthetic_samples(9, seed=5, min_length=4, max_length=40)
    padded = per_token_losses(model, pack(samples, "padding", 96), isolation=True)
    concat_rows = pack(samples, "concat", 96)
    assert max(len(r[2]) for r in concat_rows) >= 3  # rows really hold several samples

    def concat_losses(isolation: bool) -> dict[int, np.ndarray]:
        losses, by_sample = per_token_losses(model, concat_rows, isolation), {}
        for row, (_, _, segments, sources) in zip(losses, concat_rows):
            starts = np.concatenate([[0], np.cumsum(segments)])
            for source, a, b in zip(sources, starts[:-1], starts[1:]):
                by_sample[source] = row[a:b]
        return by_sample

    isolated, mixed = concat_losses(True), concat_losses(False)
    worst_off = 0.0
    for i, (ids, _) in enumerate(samples):
        expected = padded[i, : len(ids)]
        assert expected.sum() > 0
        np.testing.assert_allclose(isolated[i], expected, rtol=0, atol=1e-5, err_msg=f"sample {i}")
        worst_off = max(worst_off, float(np.abs(mixed[i] - expected).max()))
    assert worst_off > 1e-2  # without isolation, samples see their row-mates and other positions


def test_token_losses_shift_once():
    # logits that put all mass on token 3 at every position: only labels equal to 3 cost ~0
    logits = torch.full((1, 4, 5), -30.0)
    logits[..., 3] = 30.0
    labels = torch.tensor([[-100, 3, 1, -100]])
    losses = token_losses(logits, labels)
    assert losses.shape == (1, 4)
    assert losses[0, 0] < 1e-6  # position 0 predicts label 1 (= 3)
    assert losses[0, 1] > 50  # position 1 predicts label 2 (= 1)
    assert losses[0, 2] == 0 and losses[0, 3] == 0  # ignored label, and nothing after the last token

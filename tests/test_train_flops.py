"""Model FLOPs as the log counts them: which parameters do matmuls, the head on supervised tokens
only, the attention squares each kernel computes; the matmul peak MFU divides by."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shards.format import ShardSet
from tests.train_helpers import one_thread, write_shard_set  # noqa: F401 - a fixture
from train import flops
from train.model import NAMED_CONFIGS, padded_vocab_size
from train.attention import resolve_attention
from train.step import get_batch


def meta_model(name: str, vocab: int = padded_vocab_size(50259, 64)):
    with torch.device("meta"):
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, **NAMED_CONFIGS[name]))


def test_parameter_counts_leave_out_lookups_and_count_the_head_apart():
    model = meta_model("gpt2-124m")
    body, head = flops.parameter_counts(model)
    assert head == 50304 * 768  # the tied embedding is the head's weight: counted once, as the head
    assert body + head == 123_653_376 + (50304 - 50257) * 768  # nanoGPT's N for GPT-2 small (no wpe), padded vocab
    untied = meta_model("tiny-untied", 1000)
    body, head = flops.parameter_counts(untied)
    lookups = untied.transformer.wte.weight.numel() + untied.transformer.wpe.weight.numel()
    assert head == untied.lm_head.weight.numel() and body == sum(p.numel() for p in untied.parameters()) - lookups - head


def test_the_head_counts_on_supervised_tokens_only():
    config = meta_model("tiny", 1000).config
    full, unsupervised = (flops.step_flops((10, 7), config, 100, s, 0.0) for s in (100, 0))
    assert full - unsupervised == 6 * 7 * 100 and unsupervised == 6 * 10 * 100


def test_attended_squares_follow_each_kernel(tmp_path):
    """Dense sdpa computes each row's full square; varlen a square per regrouped sample; flex per sample."""
    split = ShardSet.open(write_shard_set(tmp_path / "concat", "concat", max_length=64)).split("train")
    rows = np.arange(2)
    by = {a: get_batch(split, rows, 0, isolation=True, device=torch.device("cpu"), attention=resolve_attention(a, torch.device("cpu")))
          for a in ("sdpa", "varlen", "flex")}
    _, batch = by["flex"]
    width, lengths = batch.input_ids.shape[1], batch.sequence_lengths
    assert len(lengths) > 2  # rows of several samples
    assert flops.attended_squares(*by["sdpa"], "sdpa") == 2 * width**2
    assert flops.attended_squares(*by["flex"], "flex") == float((lengths.astype(float) ** 2).sum()) < 2 * width**2
    index = by["varlen"][0]["varlen_index"]
    assert flops.attended_squares(*by["varlen"], "varlen") == sum(
        g.shape[0] * g.shape[1] ** 2 for g in (index.single_rows, *index.groups))


@pytest.mark.usefixtures("one_thread")
def test_measured_peak_is_a_rate():
    assert flops.measured_peak_flops(torch.device("cpu"), torch.float32, size=64, repeats=2) > 0

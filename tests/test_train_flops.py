"""Model FLOPs as the log counts them: which parameters do matmuls, the head on supervised tokens
only, each sample's own attention square whatever the kernel; the two peaks MFU divides by."""
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


@pytest.mark.parametrize("flatten", [False, True])
def test_attended_squares_are_each_samples_own_whatever_the_kernel(tmp_path, flatten):
    """Every kernel, isolation on or off, flattened or not: the sum of each stored sample's length^2,
    counted from the shard files (not from the batch); padding and cross-sample pairs count nothing."""
    split = ShardSet.open(write_shard_set(tmp_path / "concat", "concat", max_length=64)).split("train")
    rows = np.arange(3)
    expected = sum(int(n) ** 2 for r in rows for n in split.row(int(r)).segment_lengths)
    assert sum(len(split.row(int(r)).segment_lengths) for r in rows) > 3  # rows of several samples
    for attention in ("sdpa", "eager", "varlen", "flex"):
        for isolation in (True, False):
            _, batch = get_batch(split, rows, 0, isolation=isolation, device=torch.device("cpu"), flatten=flatten,
                                 attention=resolve_attention(attention, torch.device("cpu"), isolation=isolation))
            assert flops.attended_squares(batch) == expected, (attention, isolation)


def test_step_flops_is_palms_count_on_each_samples_length():
    """Literal: samples of 3 and 5 tokens in one row, 1 in the next (padded to 8: 7 slots count nothing);
    9 tokens, 5 supervised, L=2, d_model=4, N_body=10, N_head=7: 6*10*9 + 6*7*5 + 12*2*4*(3^2 + 5^2 + 1^2)."""
    from shards.batch import collate
    from types import SimpleNamespace

    batch = collate([[1, 2, 3, 4, 5, 6, 7, 8], [9]], [[0, 1, 1, 0, 1, 1, 1, 1], [0]], [[3, 5], [1]], 0)
    config = SimpleNamespace(num_hidden_layers=2, hidden_size=4)
    assert flops.step_flops((10, 7), config, 9, 5, flops.attended_squares(batch)) == 540 + 210 + 3360


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0), ("NVIDIA A100-PCIE-40GB", None, 156.0),
    ("NVIDIA H100 80GB HBM3", torch.float16, 989.5), ("NVIDIA H100 PCIe", torch.bfloat16, 756.5),
    ("NVIDIA H200", torch.bfloat16, 989.5), ("NVIDIA L4", torch.bfloat16, 121.0), ("NVIDIA A10", None, 62.5),
    ("NVIDIA GeForce RTX 4090", torch.float16, 165.2), ("NVIDIA A10G", torch.bfloat16, None),
    ("NVIDIA L40", torch.bfloat16, None), ("Tesla T4", torch.float16, None)])
def test_datasheet_peaks_by_device_name(name, dtype, tflops):
    peak = flops.datasheet_peak_flops(name, dtype)
    assert (peak if peak is None else peak / 1e12) == tflops


def test_mfu_divides_by_the_datasheet_and_by_the_measured_peak():
    from train.logs import Meter, Progress, RunLogger

    meter = Meter(Progress(), RunLogger(None, enabled=False), peak_flops=2.5e11, datasheet_flops=1e12)
    rates = meter.rates(tokens=1, supervised=1, slots=1, flops=1e12, data_seconds=0.0, seconds=2.0)
    assert (rates["mfu"], rates["mfu_measured_peak"]) == (0.5, 2.0)
    rates = Meter(Progress(), RunLogger(None, enabled=False)).rates(
        tokens=3, supervised=1, slots=4, flops=1e12, data_seconds=0.5, seconds=2.0)
    assert rates["mfu"] is rates["mfu_measured_peak"] is None and rates["padding_fraction"] == 0.25


def test_measured_peak_is_the_fastest_repeat(monkeypatch):
    """2 * size^3 over the fastest timed repeat; the 3 warm-ups, however fast, do not count."""
    durations = iter([0.001, 0.001, 0.001, 4.0, 0.5, 2.0])
    clock = {"now": 0.0, "start": True}

    def perf_counter():
        if not clock["start"]:
            clock["now"] += next(durations)
        clock["start"] = not clock["start"]
        return clock["now"]

    monkeypatch.setattr(flops.time, "perf_counter", perf_counter)
    assert flops.measured_peak_flops(torch.device("cpu"), torch.float32, size=8, repeats=3) == 2 * 8**3 / 0.5

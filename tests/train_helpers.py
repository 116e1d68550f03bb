"""Shard sets for the train tests, written directly with `shards.format` (no prep involved).

Samples are (token ids, loss mask) pairs; `pack` lays them into rows the three
ways prep does (padding, packed, concat) so the trainer can be tested alone.
"""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
import pytest

import sftcli

from shards.folders import staged_folder
from shards.format import (ShardSet, SplitWriter, Rows, per_row_sum, token_dtype_for,
                           tokenizer_fingerprint)
from shards.manifest import FORMAT_VERSION, Manifest, ShardStats, SplitStats, TemplateRecord, write_manifest
from prep.template import CHATML_TEMPLATE
from shards.stats import row_stats

ROOT = Path(__file__).resolve().parents[1]
GPT2_FILES = ROOT / "prep" / "assets" / "gpt2"


@functools.lru_cache(maxsize=1)
def chatml_tokenizer():
    """The vendored GPT-2 tokenizer with the ChatML set-up prep uses (pad differs from eos)."""
    from transformers import GPT2Tokenizer

    tok = GPT2Tokenizer.from_pretrained(str(GPT2_FILES), model_max_length=1024)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token, tok.bos_token, tok.pad_token = "<|im_end|>", "<|im_start|>", "<|endoftext|>"
    tok.chat_template = CHATML_TEMPLATE
    return tok


IM_START, IM_END, PAD, VOCAB = 50257, 50258, 50256, 50259


def synthetic_samples(count: int, seed: int, min_length: int = 6, max_length: int = 40) -> list:
    """ChatML-shaped samples of random tokens: <|im_start|> prompt (mask 0), answer <|im_end|> (mask 1)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        length = int(rng.integers(min_length, max_length + 1))
        prompt = int(rng.integers(1, length))  # at least one prompt and one answer token
        ids = rng.integers(0, 50000, size=length)
        ids[0], ids[-1] = IM_START, IM_END
        mask = np.zeros(length, np.uint8)
        mask[prompt:] = 1
        samples.append((ids, mask))
    return samples


def pack(samples: list, mode: str, max_length: int) -> list:
    """Rows of (ids, mask, segment_lengths, segment_sources), laid out as prep's three modes."""
    if mode == "padding":
        return [(ids[:max_length], mask[:max_length], [min(len(ids), max_length)], [i])
                for i, (ids, mask) in enumerate(samples)]
    rows = []
    if mode == "concat":  # whole samples, in order, into the first row with room (first fit)
        bins = []
        for i, (ids, mask) in enumerate(samples):
            ids, mask = ids[:max_length], mask[:max_length]
            for b in bins:
                if b["length"] + len(ids) <= max_length:
                    break
            else:
                b = {"length": 0, "pieces": []}
                bins.append(b)
            b["pieces"].append((i, ids, mask))
            b["length"] += len(ids)
        for b in bins:
            rows.append((np.concatenate([p[1] for p in b["pieces"]]), np.concatenate([p[2] for p in b["pieces"]]),
                         [len(p[1]) for p in b["pieces"]], [p[0] for p in b["pieces"]]))
        return rows
    # packed: one stream cut every max_length; a sample cut in two gives a segment in each row
    ids = np.concatenate([s[0] for s in samples])
    mask = np.concatenate([s[1] for s in samples])
    sources = np.concatenate([np.full(len(s[0]), i) for i, s in enumerate(samples)])
    for start in range(0, len(ids), max_length):
        src = sources[start:start + max_length]
        cuts = np.flatnonzero(np.diff(src)) + 1
        bounds = np.concatenate([[0], cuts, [len(src)]])
        rows.append((ids[start:start + max_length], mask[start:start + max_length],
                     np.diff(bounds).tolist(), src[bounds[:-1]].tolist()))
    return rows


def to_rows(rows: list) -> Rows:
    lengths = [len(r[0]) for r in rows]
    segments = [len(r[2]) for r in rows]
    return Rows(
        tokens=np.concatenate([r[0] for r in rows]).astype(np.int64),
        loss_mask=np.concatenate([r[1] for r in rows]).astype(np.uint8),
        row_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        segment_lengths=np.concatenate([r[2] for r in rows]).astype(np.int64),
        segment_sources=np.concatenate([r[3] for r in rows]).astype(np.int64),
        segment_offsets=np.concatenate([[0], np.cumsum(segments)]).astype(np.int64),
    )


def write_shard_set(folder: Path, mode: str = "concat", max_length: int = 64, train_samples: int = 64,
                    val_samples: int = 12, seed: int = 0, samples: list | None = None,
                    vocab_size: int = VOCAB, max_tokens_per_file: int | None = None) -> Path:
    """A complete shard set at `folder`, as prep would write it (one write per split)."""
    train = samples if samples is not None else synthetic_samples(train_samples, seed, max_length=max_length // 2)
    val = synthetic_samples(val_samples, seed + 1000, max_length=max_length // 2)
    train_rows, val_rows = to_rows(pack(train, mode, max_length)), to_rows(pack(val, "padding", max_length))
    extra = {} if max_tokens_per_file is None else {"max_tokens_per_file": max_tokens_per_file}
    return write_rows_set(folder, mode, max_length, {"train": [train_rows], "val": [val_rows]}, vocab_size, **extra)


def write_rows_set(folder: Path, mode: str, max_length: int, rows_by_split: dict, vocab_size: int = VOCAB,
                   **writer_options) -> Path:
    """A complete shard set of the given `Rows` (a list of writes per split), with a full manifest."""
    command = f"python -m prep --mode {mode} --max-length {max_length} --out {folder}"
    with staged_folder(Path(folder)) as staging:
        chatml_tokenizer().save_pretrained(str(staging / "tokenizer"))
        files, stats = [], {}
        for split, writes in rows_by_split.items():
            writer = SplitWriter(staging, split, token_dtype_for(vocab_size), vocab_size, **writer_options)
            for rows in writes:
                writer.write(rows)
            files += writer.finish()
            stats[split] = split_stats(writes, max_length)
        tokens = sum(len(r.tokens) for r in rows_by_split["train"])
        train_stats = ShardStats(**stats["train"], records_read=stats["train"]["samples"] + stats["val"]["samples"],
                                 lower_bound_rows=-(-tokens // max_length),  # L1, a valid lower bound
                                 sample_length={}, val=SplitStats(**stats["val"]))
        write_manifest(staging, Manifest(
            format_version=FORMAT_VERSION, mode=mode, max_length=max_length,
            packer="first_fit" if mode == "concat" else None, loss_on="assistant",
            token_dtype=str(token_dtype_for(vocab_size)), vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=IM_END,
            bos_token_id=IM_START, end_of_turn_token_id=IM_END, prompt_format="none", encoder="tokenizers",
            template=TemplateRecord(sha256="synthetic", kwargs={}, date=None, system_message="keep",
                                    dropped_messages={}, closed_replies={}, prompt_matches_generation=True,
                                    mismatches=[]),
            tokenizer_fingerprint=tokenizer_fingerprint(staging / "tokenizer"),
            source="synthetic", source_fingerprint="synthetic", sources=[], args={}, command=command, files=files,
            stats=train_stats,
        ))
    return Path(folder)


def split_stats(writes: list, max_length: int) -> dict:
    """What prep records for a split, for rows written without prep (every segment a whole sample)."""
    lengths = np.concatenate([np.diff(r.row_offsets) for r in writes])
    supervised = np.concatenate([per_row_sum(r.loss_mask, r.row_offsets) for r in writes])
    segments = np.concatenate([np.diff(r.segment_offsets) for r in writes])
    return dict(row_stats(lengths, supervised, segments, max_length, 16), samples=int(segments.sum()), truncated=0,
                split=0, dropped={}, rows_without_supervised_tokens_dropped=0)


def read_metrics(out: Path, kind: str = "train") -> list[dict]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def open_shards(folder: Path) -> ShardSet:
    return ShardSet.open(folder)


def tiny_config(shards: Path, out: Path, **overrides):
    """A few-second CPU run of the `tiny` model: the shape every loop test starts from."""
    from train.config import TrainConfig

    settings = dict(shards=Path(shards), out=Path(out), model="tiny", batch_size=4, max_steps=8, warmup_steps=2,
                    learning_rate=1e-3, eval_interval=3, log_interval=1, progress=False)
    return TrainConfig(**{**settings, **overrides})


def cli_args(config) -> list[str]:
    """The `python -m train` arguments that make `config`."""
    import dataclasses

    args = []
    for field in dataclasses.fields(config):
        value, flag = getattr(config, field.name), sftcli.flag(field.name)
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            args += [flag, str(value)]
    return args


def subprocess_env() -> dict:
    """Environment for `python -m train` children: this checkout importable, one thread (as in-process tests)."""
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def single_thread():
    """CPU tests run one torch thread: small ops are faster so on 2 cores, and in-process
    runs then compute exactly what `python -m train` children (OMP_NUM_THREADS=1) compute."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The loop tests' shard set: 48 synthetic samples concat-packed into rows of 64 tokens."""
    return write_shard_set(tmp_path_factory.mktemp("shards") / "concat-64", "concat", max_length=64,
                           train_samples=48, val_samples=8)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """An uninterrupted 8-step run (dropout on, shuffled, two epochs, evaluations at 3, 6, 8): what resumed
    and stopped runs must reproduce. (config, summary)."""
    from train import loop

    with single_thread():
        config = tiny_config(shards, tmp_path_factory.mktemp("runs") / "reference")
        summary = loop.train(config)
    return config, summary


def signal_when_logged(child, out: Path, step: int, number: int, seconds: float = 300) -> None:
    """Send `number` to the process `child` once OUT/metrics.jsonl holds a train record of `step` or later."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and child.poll() is None:
        try:  # the child may be writing a line right now: look again later
            if read_metrics(out)[-1]["step"] >= step:
                child.send_signal(number)
                return
        except (OSError, IndexError, json.JSONDecodeError):
            pass
        time.sleep(0.005)

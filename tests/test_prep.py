"""The prep stage end to end on small offline inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest

from prep.config import PrepConfig
from prep.pipeline import PrepError, run
from prep.readers import DataError
from prep.template import ConversationEncoder, ensure_chat_format, load_tokenizer
from shards.format import ShardSet, read_manifest
from tests.conftest import ROOT, write_jsonl


def prep(data, out, **kw):
    config = PrepConfig(data=str(data), out=str(out), **kw)
    return run(config, progress=False)


def test_manifest_describes_the_shard_set(small_jsonl, tmp_path):
    m = prep(small_jsonl, tmp_path / "s", mode="concat", max_length=256)
    for key in ("format_version", "mode", "max_length", "packer", "loss_on", "token_dtype", "vocab_size",
                "pad_token_id", "eos_token_id", "bos_token_id", "tokenizer_fingerprint", "source_fingerprint",
                "args", "files", "stats", "command"):
        assert key in m.to_json(), key
    assert (m.mode, m.token_dtype, m.vocab_size) == ("concat", "uint16", 50259)
    assert (m.pad_token_id, m.eos_token_id) == (50256, 50258)
    for f in m.files:
        assert set(f.to_json()) >= {"name", "split", "rows", "bytes", "sha256"}
    s = m.stats
    assert s.samples + s.val.samples + sum(s.dropped.values()) == 120
    assert s.rows >= s.lower_bound_rows
    assert not list(tmp_path.glob(".s.tmp-*"))
    lengths = ShardSet.open(tmp_path / "s").split("train").row_lengths()
    assert list(lengths) != sorted(lengths) and list(lengths) != sorted(lengths, reverse=True)  # shuffled rows


@pytest.mark.parametrize("mode", ["padding", "packed", "concat"])
def test_every_sample_is_traceable_and_rows_fit(small_jsonl, tmp_path, mode):
    m = prep(small_jsonl, tmp_path / mode, mode=mode, max_length=128)
    shard_set = ShardSet.open(tmp_path / mode, verify=True)
    train = shard_set.split("train")
    pieces: dict[int, int] = {}
    for r in range(train.num_rows):
        row = train.row(r)
        assert 0 < len(row.input_ids) <= 128
        assert row.segment_lengths.sum() == len(row.input_ids)
        assert row.loss_mask.sum() > 0
        for src, n in zip(row.segment_sources, row.segment_lengths):
            pieces[int(src)] = pieces.get(int(src), 0) + int(n)
    assert max(pieces) < 120 - 12  # the last 10% of records are the validation split
    if mode == "packed":
        assert m.stats.split > 0
    else:
        assert len(pieces) == m.stats.samples
        assert m.stats.split == 0


def test_validation_split_is_identical_for_every_mode(small_jsonl, tmp_path):
    hashes = set()
    for mode in ("padding", "packed", "concat"):
        m = prep(small_jsonl, tmp_path / mode, mode=mode, max_length=128)
        hashes.add(tuple(f.sha256 for f in m.files if f.split == "val"))
    assert len(hashes) == 1


def test_same_inputs_give_byte_identical_shards(small_jsonl, tmp_path):
    a = prep(small_jsonl, tmp_path / "a", mode="concat", max_length=128)
    b = prep(small_jsonl, tmp_path / "b", mode="concat", max_length=128)
    assert [f.sha256 for f in a.files] == [f.sha256 for f in b.files]
    c = prep(small_jsonl, tmp_path / "c", mode="concat", max_length=128, seed=1)
    assert [f.sha256 for f in a.files] != [f.sha256 for f in c.files]


def test_truncated_sample_keeps_its_prompt_response_boundary(tmp_path):
    record = {"instruction": "Say many words", "input": "", "output": " ".join(["word"] * 300)}
    data = write_jsonl(tmp_path / "long.jsonl", [record] * 3)
    prep(data, tmp_path / "s", mode="padding", max_length=64, val_ratio=0.0)
    row = ShardSet.open(tmp_path / "s").split("train").row(0)
    tok = ensure_chat_format(load_tokenizer("gpt2"))
    full_ids, full_mask, _ = ConversationEncoder(tok).encode([(("user", "x"), ("assistant", "y"))])
    ids, mask, _ = ConversationEncoder(tok).encode(
        [(("user", "Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\nSay many words"), ("assistant", record["output"]))])
    assert len(row.input_ids) == 64
    assert list(row.input_ids) == list(ids[:64]) and list(row.loss_mask) == list(mask[:64])
    first = int(np.argmax(row.loss_mask))
    assert tok.decode(row.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert row.loss_mask[first:].all()


def test_sample_whose_labels_are_all_cut_away_is_dropped_and_counted(tmp_path):
    long_prompt = {"instruction": "word " * 200, "input": "", "output": "ok"}
    short = {"instruction": "hi", "input": "", "output": "ok"}
    data = write_jsonl(tmp_path / "d.jsonl", [long_prompt, short, short])
    m = prep(data, tmp_path / "s", mode="concat", max_length=64, val_ratio=0.0)
    assert m.stats.samples == 2
    assert m.stats.dropped == {"no_supervised_tokens_after_truncation": 1}


def test_overlong_error_and_drop(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b " * 100}, {"instruction": "a", "output": "b"}])
    with pytest.raises(PrepError, match="record 0 .* over --max-length 32"):
        prep(data, tmp_path / "e", mode="padding", max_length=32, overlong="error", val_ratio=0.0)
    assert not (tmp_path / "e").exists()
    m = prep(data, tmp_path / "d", mode="padding", max_length=32, overlong="drop", val_ratio=0.0)
    assert m.stats.dropped == {"too_long": 1} and m.stats.samples == 1


def test_a_failed_run_leaves_the_previous_shard_set(small_jsonl, tmp_path):
    before = prep(small_jsonl, tmp_path / "s", mode="concat", max_length=128)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    with pytest.raises(DataError, match="record 1"):
        prep(bad, tmp_path / "s", mode="concat", max_length=128)
    after = read_manifest(tmp_path / "s")
    assert after.files == before.files
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_prints_stats_and_bad_input_exits_non_zero(small_jsonl, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "prep", "--data", str(small_jsonl), "--mode", "padding",
                         "--max-length", "128", "--out", str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "pad_fraction_at_batch" in ok.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": ""}])
    res = subprocess.run([sys.executable, "-m", "prep", "--data", str(bad), "--out", str(tmp_path / "t")],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    assert "bad.jsonl" in res.stderr and "output" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "t").exists()

"""A damaged or foreign shard set is refused before the first step: one `error:` line, the rebuild command."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from shards.format import Rows, SplitWriter
from tests.train_helpers import cli_args, tiny_config, write_shard_set
from train.__main__ import main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("shards") / "concat-64", "concat", max_length=64,
                           train_samples=24, val_samples=4)


@pytest.fixture
def shards(pristine, tmp_path):
    copy = tmp_path / "concat-64"
    shutil.copytree(pristine, copy)
    return copy


def refused(shards, tmp_path, *extra: str) -> str:
    """Run the CLI; check it failed cleanly before training; return its one error line."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [*cli_args(tiny_config(shards, out)), *extra])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists()  # not one step was taken, nothing written: the same command runs once fixed
    line = result.stderr.strip()
    assert line.startswith("error: ")
    return line


def manifest(shards) -> dict:
    return json.loads((shards / "manifest.json").read_text())


def test_truncated_file(shards, tmp_path):
    path = shards / "train-00000.arrow"
    path.write_bytes(path.read_bytes()[:-100])
    line = refused(shards, tmp_path)
    assert "train-00000.arrow" in line and "truncated" in line
    assert "rebuild it with: python -m prep --mode concat --max-length 64 --out " in line


def test_flipped_byte_with_verify(shards, tmp_path):
    path = shards / "val-00000.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    line = refused(shards, tmp_path, "--verify")
    assert "val-00000.arrow" in line and "sha256" in line and "rebuild it with: python -m prep" in line


def test_missing_file(shards, tmp_path):
    (shards / "val-00000.arrow").unlink()
    line = refused(shards, tmp_path)
    assert "val-00000.arrow" in line and "missing" in line and "rebuild it with: python -m prep" in line


def test_manifest_of_another_format_version(shards, tmp_path):
    data = manifest(shards)
    data["format_version"] = 99
    (shards / "manifest.json").write_text(json.dumps(data))
    line = refused(shards, tmp_path)
    assert "format version 99" in line and "rebuild it with: python -m prep" in line


def test_tokenizer_fingerprint_mismatch(shards, tmp_path):
    config = shards / "tokenizer" / "tokenizer_config.json"
    config.write_text(config.read_text().replace("<|im_end|>", "<|endoftext|>", 1))
    line = refused(shards, tmp_path)
    assert "tokenizer_fingerprint" in line and "rebuild it with: python -m prep" in line


def test_token_id_outside_the_model_vocabulary(tmp_path):
    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=24, val_samples=4)
    # rewrite one train file with a token id past the 50259 rows of the model's embeddings
    data = manifest(shards)
    entry = next(e for e in data["files"] if e["split"] == "train")
    (shards / entry["name"]).unlink()
    writer = SplitWriter(shards, "train", np.uint16, 60000)
    n = 40
    tokens = np.full(n, 7)
    tokens[5] = 50300
    writer.write(Rows(tokens, np.ones(n, np.uint8), np.arange(0, n + 1, 10), np.full(4, 10), np.arange(4),
                      np.arange(5)))
    entry.update(writer.finish()[0].to_json())
    (shards / "manifest.json").write_text(json.dumps(data))
    line = refused(shards, tmp_path)
    assert "token id 50300 is outside the model's vocabulary of 50259" in line and "rebuild it with" in line


def test_missing_shard_folder(tmp_path):
    line = refused(tmp_path / "nowhere", tmp_path)
    assert "no such shard set folder" in line and "make shards" in line


def test_unloadable_model(shards, tmp_path):
    line = refused(shards, tmp_path, "--model", str(tmp_path / "no-such-model"))
    assert "cannot load model" in line and "tiny, tiny-untied, gpt2-124m" in line


@pytest.mark.parametrize("key", ["token_dtype", "files", "stats"])
def test_a_manifest_missing_a_key_is_named_by_train_and_stats(shards, tmp_path, key):
    from shards.__main__ import main as shards_main

    data = manifest(shards)
    del data[key]
    (shards / "manifest.json").write_text(json.dumps(data))
    line = refused(shards, tmp_path)
    assert f"{key}: missing" in line and "rebuild it with: python -m prep" in line
    result = CliRunner().invoke(shards_main, ["stats", str(shards)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and f"{key}: missing" in result.stderr, result.stderr


def test_a_mistyped_manifest_key_is_named(shards, tmp_path):
    data = manifest(shards)
    data["max_length"], data["stats"]["val"]["rows"] = "64", None
    (shards / "manifest.json").write_text(json.dumps(data))
    line = refused(shards, tmp_path)
    assert "max_length: expected int, got str" in line and "stats.val.rows: expected int, got NoneType" in line

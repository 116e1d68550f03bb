"""Bad input end to end: each case of tests/data/bad/ stops prep cleanly, or is skipped and counted."""
import json
import subprocess
import sys

import numpy as np
import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from prep.readers import DataError
from shards.format import ShardSet
from tests.conftest import ROOT
from tests.test_sources import BAD, BAD_CASES, OK


def _prep(data, out, **kw):
    return run(PrepConfig(data=str(data), out=str(out), val_ratio=0.0, max_length=128, **kw), progress=False)


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.file)
def test_bad_case_stops_with_a_clear_error_and_no_shard_set(case, tmp_path):
    with pytest.raises(DataError) as error:
        _prep(BAD / case.file, tmp_path / "s")
    message = str(error.value)
    assert case.file in message and all(part in message for part in case.expect)
    assert list(tmp_path.iterdir()) == []  # neither a shard set nor a staging folder


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c.good is not None], ids=lambda c: c.file)
def test_bad_case_with_skip_bad_writes_every_good_record(case, tmp_path):
    manifest = _prep(BAD / case.file, tmp_path / "s", skip_bad=True, mode="padding")
    stats = manifest.stats
    assert stats.samples == case.good
    assert stats.dropped.get(case.reason, 0) >= 1


def test_cli_error_is_one_line_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "prep", "--data", str(BAD / "null_output.jsonl"),
                          "--out", str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "line 7 (record 6)" in error_lines[0] and "--skip-bad" in error_lines[0]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["bom.json", "bom.jsonl", "crlf.jsonl", "extra_fields.jsonl", "bom.csv"])
def test_legitimate_oddities_are_accepted(name, tmp_path):
    manifest = _prep(OK / name, tmp_path / "s", mode="padding")
    assert manifest.stats.samples >= 1 and not manifest.stats.dropped


def test_literal_control_strings_cannot_forge_a_turn(tmp_path):
    _prep(OK / "special_tokens.jsonl", tmp_path / "s", mode="padding")
    shard_set = ShardSet.open(tmp_path / "s")
    im_start = shard_set.manifest.bos_token_id
    train = shard_set.split("train")
    for r in range(train.num_rows):
        ids = train.row(r).input_ids
        assert int(np.sum(ids == im_start)) == 2  # only the template's user and assistant turns


def test_very_long_record_is_truncated_not_fatal(tmp_path):
    manifest = _prep(OK / "long_record.jsonl", tmp_path / "s", mode="concat")
    assert manifest.stats.truncated >= 1
    lengths = ShardSet.open(tmp_path / "s").split("train").row_lengths()
    assert lengths.max() <= 128

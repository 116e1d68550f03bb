"""Crash safety and disk space of prep (issue: reliability)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from prep.config import PrepConfig
from prep.pipeline import PrepError, run
from shards.format import ShardSet, read_manifest
from tests.conftest import ROOT, SAMPLE, write_jsonl


def _prep_cmd(data, out, mode):
    return [sys.executable, "-m", "prep", "--data", str(data), "--mode", mode, "--max-length", "128",
            "--batch-size", "20", "--out", str(out)]


@pytest.fixture(scope="module")
def bigger_jsonl(tmp_path_factory):
    records = json.loads(SAMPLE.read_text()) * 3
    return write_jsonl(tmp_path_factory.mktemp("data") / "bigger.jsonl", records)


def test_sigkill_at_any_moment_leaves_previous_set_or_none(bigger_jsonl, tmp_path):
    out = tmp_path / "s"
    # The run that writes the previous set also times a full run (the same records; padding and
    # concat cost about the same), to spread the kill points over it: one prep start less.
    t0 = time.monotonic()
    subprocess.run(_prep_cmd(bigger_jsonl, out, "padding"), check=True, capture_output=True, cwd=ROOT)
    duration = time.monotonic() - t0
    previous = read_manifest(out)
    for fraction in (0.2, 0.45, 0.7, 0.85, 0.95):
        proc = subprocess.Popen(_prep_cmd(bigger_jsonl, out, "concat"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            manifest = read_manifest(out)
            ShardSet.open(out, verify=True)  # complete and intact, whichever it is
            if manifest.mode == "concat":  # the kill came after the rename: the new set is whole
                previous = manifest
            assert manifest == previous
    # a rerun succeeds and cleans up what the killed runs left behind
    subprocess.run(_prep_cmd(bigger_jsonl, out, "concat"), check=True, capture_output=True, cwd=ROOT)
    ShardSet.open(out, verify=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refuses_when_the_disk_is_too_small(small_jsonl, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(PrepError, match="MiB free, the shard set needs about"):
        run(PrepConfig(data=str(small_jsonl), out=str(tmp_path / "s")), progress=False)
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == [small_jsonl]

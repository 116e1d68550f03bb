"""Crash safety and disk space of prep (issue: reliability)."""
import json
import os
import re
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


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_prep_on_one_out_stops_at_once(bigger_jsonl, tmp_path):
    from click.testing import CliRunner

    from prep.__main__ import main
    from shards.lock import lock_path

    out = tmp_path / "s"
    first = subprocess.Popen(_prep_cmd(bigger_jsonl, out, "concat"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        try:
            if json.loads(lock_path(out).read_text())["pid"] == first.pid:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # holds the lock, however slow this machine is
    try:
        result = CliRunner().invoke(main, _prep_cmd(bigger_jsonl, out, "padding")[3:])
    finally:
        first.send_signal(signal.SIGCONT)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(f"error: {out} is being written by another prep (pid {first.pid} on ")
    assert result.stderr.endswith(f"wait for it to finish, or stop it (kill {first.pid}); or choose another --out\n")
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]  # the first one was not disturbed
    assert read_manifest(out).mode == "concat"
    ShardSet.open(out, verify=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the lock file is gone too


@pytest.mark.parametrize("site", ["tokenizer", "shards", "manifest"])
def test_a_full_disk_during_prep_is_one_line_and_keeps_the_previous_set(small_jsonl, tmp_path, monkeypatch, site):
    import errno
    import pathlib

    import transformers
    from click.testing import CliRunner

    from prep.__main__ import main
    from shards.format import SplitWriter

    out = tmp_path / "s"
    run(PrepConfig(data=str(small_jsonl), mode="padding", max_length=128, out=str(out)), progress=False)
    before = _files(out)
    if site == "tokenizer":  # the Rust writer of tokenizers reports a full disk as a plain Exception
        def save(self, *args, **kwargs):
            raise Exception("No space left on device (os error 28)")

        monkeypatch.setattr(transformers.tokenization_utils_base.PreTrainedTokenizerBase, "save_pretrained", save)
    elif site == "shards":  # Arrow's OSError carries the errno in its text only
        def write_slice(self, *args):
            raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")

        monkeypatch.setattr(SplitWriter, "_write_slice", write_slice)
    else:
        real = pathlib.Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name == "manifest.json.tmp":
                real(self, data[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real(self, data, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    result = CliRunner().invoke(main, ["--data", str(small_jsonl), "--mode", "concat", "--max-length", "128",
                                       "--out", str(out)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {out}: no space left on the device (") and "MiB needed" in result.stderr
    assert result.stderr.endswith("the previous shard set (if any) is intact; free some space or choose another "
                                  "--out\n")
    assert _files(out) == before  # byte-identical
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written folder


def test_prep_on_a_3_mib_file_system_is_refused_with_the_sizes(tmp_path):
    """The issue's case, on a real tmpfs (a user namespace mounts it): the tokenizer alone is 3.4 MiB,
    so the free-space check, which now counts it, refuses before anything is written."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=3m tmpfs {small} && {sys.executable} -m prep --data sample --out {small}/s; "
              f"echo rc=$?; ls -A {small}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert re.fullmatch(f"error: {re.escape(str(small))}: [0-9.]+ MiB free, the shard set needs about [0-9.]+ MiB; "
                        "free some space or choose another --out\n", done.stderr), done.stderr
    assert done.stdout.strip() == "rc=1"  # and nothing in the file system

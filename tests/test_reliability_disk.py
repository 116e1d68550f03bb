"""A real full disk under a training run: a tmpfs, mounted in a user namespace, too small for a second checkpoint."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys

import pytest

from shards.folders import folder_bytes
from tests.train_helpers import cli_args, reference, shards, subprocess_env  # noqa: F401

HASHES = """import hashlib, json, pathlib, sys
run = pathlib.Path(sys.argv[1])
print(json.dumps({str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(run.rglob("*")) if p.is_file() and p.parts[-2] in ("best", "last")}))
"""


def test_a_real_full_disk_at_a_checkpoint_save_is_one_line_and_keeps_the_checkpoints(reference, tmp_path):
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user namespaces here to mount a tmpfs")
    config, _ = reference
    best, last = folder_bytes(config.out / "best"), folder_bytes(config.out / "last")
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "hashes.py").write_text(HASHES)
    run = dataclasses.replace(config, out=disk / "run", max_steps=6, eval_interval=3)
    train = f"{shlex.quote(sys.executable)} -m train {shlex.join(cli_args(run))}"
    hashes = f"{shlex.quote(sys.executable)} {tmp_path / 'hashes.py'} {disk / 'run'}"
    # room for best/ and last/ of step 3 and half of a new best/: the save of step 6 fills the disk
    script = (f"mount -t tmpfs -o size={best + last + best // 2 + (1 << 20)} tmpfs {disk} && "
              f"{train} --stop-after 3 >/dev/null 2>&1 && {hashes} && {train} --resume >/dev/null 2>{tmp_path / 'err'}; "
              f"echo $?; {hashes}; ls -A {disk} {disk / 'run'}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    before, code, after, *listing = done.stdout.splitlines()
    error = (tmp_path / "err").read_text()
    assert code == "1" and error.count("\n") == 1 and "Traceback" not in error, done.stdout + done.stderr + error
    assert error.startswith(f"error: {disk / 'run' / 'best'}: no space left on the device (") and "needed" in error
    assert json.loads(after) == json.loads(before)  # best/ and last/ of step 3, byte for byte
    assert listing == [f"{disk}:", "run", "", f"{disk / 'run'}:", "best", "config.json", "last", "metrics.jsonl",
                       "summary.json", "tb"]  # no staging folder, no lock file (summary.json: of step 3)

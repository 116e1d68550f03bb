"""`torchrun --nproc_per_node 2 -m train` on CPU (gloo) matches one process with the same global batch."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import (cli_args, one_thread, read_metrics, signal_when_logged, subprocess_env,  # noqa: F401
                                 tiny_config, write_shard_set)
from train import loop

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_two_processes_match_one(tmp_path):
    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    # dropout off: each process draws its own dropout masks, so only the dropout-free runs can agree
    config = tiny_config(shards, tmp_path / "one", max_steps=4, eval_interval=2, dropout=0.0)
    single = loop.train(config)
    two = dataclasses.replace(config, out=tmp_path / "two")
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "train", *cli_args(two)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads((two.out / "summary.json").read_text())
    assert summary["world_size"] == 2
    for key in ("tokens", "supervised_tokens"):
        assert summary[key] == single[key], key
    assert summary["padding_fraction"] <= single["padding_fraction"]  # each process pads to its own longest row
    for kind, key in (("train", "loss"), ("val", "val_loss")):
        np.testing.assert_allclose([r[key] for r in read_metrics(two.out, kind)],
                                   [r[key] for r in read_metrics(config.out, kind)], rtol=1e-5, err_msg=kind)
    ours, theirs = (load_file(run.out / "last" / "model.safetensors") for run in (two, config))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-6)


def test_ranks_reading_different_shard_sets_refuse_to_start(tmp_path):
    """Two processes as two nodes would run them (each its own --shards path): a copy is accepted, another set is not."""
    import shutil
    import socket

    from shards.manifest import read_manifest

    first = write_shard_set(tmp_path / "node0" / "concat-64", "concat", max_length=64, train_samples=24, val_samples=4)
    other = write_shard_set(tmp_path / "node1" / "concat-64", "concat", max_length=64, train_samples=24, val_samples=4,
                            seed=1)
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "concat-64")
    assert read_manifest(copy).fingerprint() == read_manifest(first).fingerprint()
    assert read_manifest(other).fingerprint() != read_manifest(first).fingerprint()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launched = []
    for rank, shards in enumerate((first, other)):
        config = tiny_config(shards, tmp_path / f"run{rank}", max_steps=2)
        env = {**subprocess_env(), "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        launched.append(subprocess.Popen([sys.executable, "-m", "train", *cli_args(config)], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for rank, process in enumerate(launched):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr[-3000:]
        assert stderr.startswith("error: the processes read different shard sets (rank 0 on ") and "Traceback" not in stderr
        assert f"rank 1 on {socket.gethostname()}: {other}" in stderr and "copy the one folder to each node" in stderr
        assert not (tmp_path / f"run{rank}" / "config.json").exists()  # refused before it wrote anything


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resume_is_exact(tmp_path):
    """SIGTERM to torchrun (what Slurm and Kubernetes send): it passes it to both processes, which agree on
    the step to stop at (their votes ride on the step's all-reduce), save last/ and exit; --resume under
    torchrun then gives the uninterrupted run's losses exactly. Dropout on: each process's RNG is restored."""
    import signal

    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train"]
    whole, stopped = (tiny_config(shards, tmp_path / name, max_steps=8, eval_interval=3) for name in ("whole", "stopped"))
    done = subprocess.run([*torchrun, *cli_args(whole)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = open(tmp_path / "output.txt", "wb")
    child = subprocess.Popen([*torchrun, *cli_args(stopped)], env=subprocess_env(), stdout=log, stderr=log)
    signal_when_logged(child, stopped.out, 2, signal.SIGTERM)
    child.wait(timeout=300)
    log.close()
    output = (tmp_path / "output.txt").read_text()
    summary = json.loads((stopped.out / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and 2 <= summary["steps"] < 8, output[-3000:]
    assert output.count(f"stopped by SIGTERM after step {summary['steps']}: ") == 1  # rank 0 says it, once
    state = json.loads((stopped.out / "last" / "trainer_state.json").read_text())
    assert state["progress"]["step"] == summary["steps"]
    resumed = subprocess.run([*torchrun, *cli_args(dataclasses.replace(stopped, resume=True))], env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for kind, key in (("train", "loss"), ("val", "val_loss")):
        assert [r[key] for r in read_metrics(stopped.out, kind)] == [r[key] for r in read_metrics(whole.out, kind)]

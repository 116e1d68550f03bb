"""What clusters do to a training run: stop signals, a second writer, a full disk, a kill before the first checkpoint.

Signals are sent with os.kill to this process from inside the loop (a step, an evaluation, a checkpoint
save), so each lands at a known point; one test sends SIGTERM to a real `python -m train` process.
A full disk is simulated at each write site by a write that raises OSError(ENOSPC) (or the Rust
writers' plain Exception), as a real full disk makes it fail.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from shards.folders import DiskFull
from shards.lock import FolderBusy, folder_lock, lock_path
from tests.train_helpers import (cli_args, one_thread, read_metrics, reference, shards,  # noqa: F401
                                 signal_when_logged, single_thread, subprocess_env, tiny_config)
from train import logs, loop, setup, signals
from train.__main__ import main
from train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference_config(reference):
    """The config of the uninterrupted 8-step run (evaluations at 3, 6, 8) that stopped runs must reproduce."""
    return reference[0]


def losses(out: Path, kind: str = "train") -> list[float]:
    return [r["loss" if kind == "train" else "val_loss"] for r in read_metrics(out, kind)]


def files(folder: Path) -> dict:
    """Every file below `folder` and its sha256: what "byte-identical" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_resumes_exactly(config: TrainConfig, whole: TrainConfig) -> None:
    loop.train(dataclasses.replace(config, resume=True))
    assert losses(config.out) == losses(whole.out)  # 0 difference
    assert losses(config.out, "val") == losses(whole.out, "val")


def leftovers(out: Path) -> list[str]:
    """Temporary names a writer left beside or inside the run folder (staging folders, .tmp files, the lock)."""
    names = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return names + [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def signal_at(monkeypatch, target, name: str, number: int, step: int) -> None:
    """Send `number` to this process when `target.name` is called at progress step `step` (before it runs)."""
    real = getattr(target, name)

    def wrapper(*args, **kwargs):
        if args[0].progress.step == step:  # args[0]: the Run
            os.kill(os.getpid(), number)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


@pytest.mark.parametrize("point, number, stopped_at", [
    ("step", signal.SIGTERM, 5),  # Run.step of step 5: that step is finished, then the run stops
    ("evaluation", signal.SIGINT, 4),  # the evaluation at step 3: it and its saves finish, step 4 runs
    ("checkpoint save", signal.SIGUSR1, 7),  # last/ of step 6 is written whole, step 7 runs
])
def test_a_stop_signal_saves_last_and_resume_is_exact(reference_config, tmp_path, monkeypatch, point, number, stopped_at):
    if point == "step":
        signal_at(monkeypatch, setup.Run, "step", number, 4)
    elif point == "evaluation":
        signal_at(monkeypatch, loop, "evaluate", number, 3)
    else:
        signal_at(monkeypatch, loop, "save_last", number, 6)
    config = dataclasses.replace(reference_config, out=tmp_path / "run")
    result = CliRunner().invoke(main, cli_args(config))
    name = signal.Signals(number).name
    assert result.exit_code == (0 if number == signal.SIGUSR1 else 128 + number), result.output
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["stopped"] == name and summary["steps"] == stopped_at and not summary["completed"]
    assert json.loads((config.out / "last" / "trainer_state.json").read_text())["progress"]["step"] == stopped_at
    assert f"stopped by {name} after step {stopped_at}: {config.out / 'last'} holds it; continue with: " \
           "python -m train" in result.stdout
    assert leftovers(config.out) == []
    monkeypatch.undo()
    with single_thread():
        assert_resumes_exactly(config, reference_config)
    assert json.loads((config.out / "summary.json").read_text())["stopped"] is None


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_previous_last(reference_config, tmp_path, monkeypatch):
    config = dataclasses.replace(reference_config, out=tmp_path / "run")
    before = {}
    real_save = torch.save

    def interrupted_save(obj, path, *args, **kwargs):  # torch.save of last/ at step 6, inside its staging folder
        state = config.out / "last" / "trainer_state.json"
        if state.exists() and json.loads(state.read_text())["progress"]["step"] == 3:
            before.update(files(config.out / "last"))
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once, here
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    monkeypatch.setattr(signals, "SAME_PRESS_SECONDS", -1.0)  # the two kills here are two presses
    result = CliRunner().invoke(main, cli_args(config))
    assert result.exit_code == 130 and before, result.output
    assert result.stderr.startswith("error: interrupted by Ctrl-C;") and result.stderr.count("\n") == 1
    assert files(config.out / "last") == before  # the step-3 checkpoint, byte for byte
    assert leftovers(config.out) == [] and not (config.out / "summary.json").exists()
    monkeypatch.undo()
    with single_thread():
        assert_resumes_exactly(config, reference_config)


def test_one_ctrl_c_delivered_twice_is_one_press_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with signals.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # from the terminal
        os.kill(os.getpid(), signal.SIGTERM)  # more of the same stop: nothing changes
        os.kill(os.getpid(), signal.SIGINT)  # the same press, passed on by torchrun's agent
        assert stop.name == "SIGINT" and stop.agreed(None) and stop.votes() == [0, 1, 0]
        stop.received_at -= 2 * signals.SAME_PRESS_SECONDS
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second press
    assert signal.getsignal(signal.SIGINT) is before
    other = signals.StopSignals()  # a process that got none stops for the signal the others got
    assert other.agreed([0.0, 0.0, 1.0]) and other.name == "SIGUSR1" and not signals.StopSignals().agreed([0, 0, 0])


def test_sigterm_ends_a_train_process_with_143_and_resume_is_exact(reference_config, tmp_path):
    config = dataclasses.replace(reference_config, out=tmp_path / "run")
    log = open(tmp_path / "output.txt", "wb")  # a file, not a pipe: a full pipe would stall the child
    child = subprocess.Popen([sys.executable, "-m", "train", *cli_args(config)], env=subprocess_env(),
                             stdout=log, stderr=log)
    signal_when_logged(child, config.out, 2, signal.SIGTERM)
    child.wait(timeout=120)
    log.close()
    output = (tmp_path / "output.txt").read_text()
    assert child.returncode == 143, output[-2000:]
    summary = json.loads((config.out / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and 2 <= summary["steps"] < 8, output[-2000:]
    assert f"stopped by SIGTERM after step {summary['steps']}: " in output
    assert_resumes_exactly(config, reference_config)


def test_resume_before_the_first_checkpoint_trains_from_step_0(reference_config, tmp_path, monkeypatch):
    config = dataclasses.replace(reference_config, out=tmp_path / "run")

    def killed(run):  # the run dies at its first evaluation: config.json and 3 steps of metrics, no checkpoint
        raise SystemExit(137)

    monkeypatch.setattr(loop, "evaluate", killed)
    with pytest.raises(SystemExit):
        loop.train(config)
    monkeypatch.undo()
    assert (config.out / "config.json").exists() and not (config.out / "last").exists()
    assert [r["step"] for r in read_metrics(config.out)] == [1, 2, 3]
    result = CliRunner().invoke(main, cli_args(dataclasses.replace(config, resume=True)))
    assert result.exit_code == 0, result.output
    assert (f"--resume: {config.out / 'last'} holds no checkpoint yet: training from step 0 in {config.out} "
            "(its config.json matches)") in result.stdout
    assert losses(config.out) == losses(reference_config.out)  # the lines of the killed run were dropped, step 1 again
    assert losses(config.out, "val") == losses(reference_config.out, "val")
    # a folder holding nothing resumes from step 0 too; one whose options differ is refused
    other = dataclasses.replace(config, out=tmp_path / "empty", resume=True, max_steps=1)
    assert CliRunner().invoke(main, cli_args(other)).exit_code == 0
    result = CliRunner().invoke(main, cli_args(dataclasses.replace(config, resume=True, seed=1)))
    assert result.exit_code == 1 and "--seed: the run used 1337, now 1" in result.stderr


def test_a_second_train_on_a_run_folder_stops_at_once(shards, tmp_path):
    config = tiny_config(shards, tmp_path / "run", max_steps=10000, eval_interval=10000, log_interval=100)
    log = open(tmp_path / "output.txt", "wb")
    child = subprocess.Popen([sys.executable, "-m", "train", *cli_args(config)], env=subprocess_env(),
                             stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None and not (config.out / "config.json").exists():
            time.sleep(0.01)  # config.json is written under the lock
        assert child.poll() is None, (tmp_path / "output.txt").read_text()[-2000:]
        for second in (config, dataclasses.replace(config, resume=True)):  # a rerun, a requeue racing a restart
            result = CliRunner().invoke(main, cli_args(second))
            assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
            assert result.stderr.startswith(f"error: {config.out} is being written by another train (pid "
                                            f"{child.pid} on ")
            assert f"wait for it to finish, or stop it (kill {child.pid}); or pass another --out" in result.stderr
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=120)
        log.close()
    assert child.returncode == 143  # the holder, untouched by the refused ones, stopped as asked
    assert not lock_path(config.out).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    import socket

    folder = tmp_path / "out"
    code = ("import os, signal; from pathlib import Path; from shards.lock import folder_lock\n"
            f"with folder_lock(Path({str(folder)!r}), 'prep'):\n"
            "    print(os.getpid(), flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads(lock_path(folder).read_text())["writer"] == "prep"  # left behind, but no longer locked
    with folder_lock(folder, "train"):  # the kernel released the dead holder's flock: taken over, with a note
        note = capsys.readouterr().err
        assert note.startswith(f"note: {folder}: taking over the lock of a prep that was killed (pid "
                               f"{killed.stdout.strip()} on {socket.gethostname()}, since ") and note.endswith(" UTC)\n")
        with pytest.raises(FolderBusy, match=f"being written by another train \\(pid {os.getpid()} on "):
            with folder_lock(folder, "train"):
                pass
    assert not lock_path(folder).exists()
    with folder_lock(folder, "train"):  # a lock released normally leaves nothing to take over
        assert capsys.readouterr().err == ""


def _full_write_text(monkeypatch, pattern: str, when: str = "") -> None:
    """Path.write_text raises ENOSPC, after writing half the text, for paths whose text contains `pattern`
    and texts that contain `when`."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if pattern in str(self) and when in data:
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


class _FullFile:
    """A file whose first write containing `when` raises ENOSPC after writing half of it (a torn line)."""

    def __init__(self, file, when: str):
        self.file, self.when = file, when

    def write(self, text: str) -> int:
        if self.when in text:
            self.file.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def _fill_disk(monkeypatch, site: str, config: TrainConfig) -> None:
    """Make the write of `site` fail as a full disk makes it fail, at step 5 or 6 (after the saves of step 3)."""
    if site in ("best/", "last/"):  # the trainer_state.json of the save of step 6, in its staging folder
        _full_write_text(monkeypatch, f"/.{site[:-1]}.tmp-", when='"step": 6,')
    elif site == "summary.json":
        _full_write_text(monkeypatch, "summary.json.tmp")
    elif site == "metrics.jsonl":
        real_init = logs.RunLogger.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            self.file = _FullFile(self.file, when='"step": 5,')

        monkeypatch.setattr(logs.RunLogger, "__init__", init)
    else:  # tb/: TensorBoard's writer thread hits the full disk; its flush raises the error in the loop
        from torch.utils.tensorboard import SummaryWriter

        real_flush = SummaryWriter.flush

        def flush(self):
            if len(read_metrics(config.out)) >= 5:  # after the train record of step 5
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_flush(self)

        monkeypatch.setattr(SummaryWriter, "flush", flush)


@pytest.mark.parametrize("site, folder", [("best/", "best"), ("last/", "last"), ("metrics.jsonl", ""),
                                          ("tb/", ""), ("summary.json", "")])
def test_a_full_disk_stops_the_run_with_one_line(reference_config, tmp_path, monkeypatch, site, folder):
    config = dataclasses.replace(reference_config, out=tmp_path / "run", max_steps=6, eval_interval=3)
    saved = {}
    real_evaluate = loop.evaluate

    def evaluate(run):  # what step 3 saved, just before the saves of step 6
        if run.progress.step == 6:
            saved.update({name: files(config.out / name) for name in ("best", "last")})
        return real_evaluate(run)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    _fill_disk(monkeypatch, site, config)
    result = CliRunner().invoke(main, cli_args(config))
    monkeypatch.undo()
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {config.out / folder if folder else config.out}: no space left on "
                                    "the device (") and "MiB free" in result.stderr
    assert result.stderr.rstrip().endswith(f"free some space, then continue with: python -m train --shards "
                                           f"{config.shards} --out {config.out} --batch-size 4 --max-steps 6 "
                                           "--learning-rate 0.001 --warmup-steps 2 --eval-interval 3 "
                                           "--log-interval 1 --no-progress --resume")
    if folder:
        assert "MiB needed" in result.stderr
    lines = (config.out / "metrics.jsonl").read_text().splitlines()
    complete = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    assert complete[-1] == {"metrics.jsonl": 4, "tb/": 5}.get(site, 6)  # stopped at the failed write, no step later
    if site in ("best/", "last/"):
        assert files(config.out / folder) == saved[folder]  # the checkpoint of step 3, byte for byte
    assert not (config.out / "summary.json").exists() and leftovers(config.out) == []


def test_disk_full_errors_are_recognised_only_for_a_full_disk():
    from shards.folders import on_disk_full

    with pytest.raises(DiskFull, match="^/x: no space left on the device \\(.* MiB free, about 2.0 MiB needed\\); fix$"):
        with on_disk_full(Path("/x"), "fix", need=2 << 20):
            raise Exception("No space left on device (os error 28)")  # tokenizers' and safetensors' Rust writers
    with pytest.raises(PermissionError):
        with on_disk_full(Path("/x"), "fix"):
            raise PermissionError(errno.EACCES, "Permission denied")

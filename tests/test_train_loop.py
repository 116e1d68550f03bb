"""The loop end to end on CPU: the run folder, resume, accumulation, overflow and NaN faults, SIGKILL."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sftcli import flag
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.train_helpers import (cli_args, one_thread, read_metrics, reference, shards, single_thread,  # noqa: F401
                                 subprocess_env, tiny_config, write_shard_set)
from train.__main__ import main
from train.config import TrainConfig, from_command_line
from train.data import RowOrder
from train.logs import SUMMARY_KEYS, TRAIN_KEYS, VAL_KEYS
from train import head, loop, setup

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out)]


def test_a_run_writes_its_folder(reference):
    config, summary = reference
    out = config.out
    for name in ("config.json", "metrics.jsonl", "summary.json", "tb", "best", "last"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "best").iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", "trainer_state.json"])
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= {p.name for p in (out / "last").iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left
    # metrics: one train record per step, a val record per evaluation, the documented keys
    train_records, val_records = read_metrics(out, "train"), read_metrics(out, "val")
    assert [r["step"] for r in train_records] == list(range(1, 9))
    assert [r["step"] for r in val_records] == [3, 6, 8]
    assert all(tuple(r) == TRAIN_KEYS for r in train_records) and all(tuple(r) == VAL_KEYS for r in val_records)
    assert train_records[-1]["loss"] < train_records[0]["loss"]
    assert 0 <= train_records[0]["padding_fraction"] < 1
    # the rates: model FLOPs per second, the share waiting for data; MFU only where a CUDA peak was measured
    for r in train_records:
        assert r["model_tflops"] > 0 and 0 <= r["data_wait_fraction"] < 1
        assert r["mfu"] is r["mfu_measured_peak"] is None
    # summary
    saved = json.loads((out / "summary.json").read_text())
    assert tuple(saved) == SUMMARY_KEYS and saved == summary
    assert summary["steps"] == 8 and summary["completed"] and summary["mode"] == "concat"
    assert summary["epoch"] >= 1  # the resume tests below cross an epoch boundary
    assert summary["best_val_loss"] == min(r["val_loss"] for r in val_records)
    assert summary["tokens"] == train_records[-1]["tokens"] and summary["overflow_skipped_steps"] == 0
    assert summary["model_tflops"] > 0 and 0 <= summary["data_wait_fraction"] < 1
    assert summary["mfu"] is summary["matmul_peak_tflops"] is summary["peak_memory_gib"] is None  # CPU
    assert summary["mfu_measured_peak"] is summary["datasheet_peak_tflops"] is None and not summary["group_by_length"]
    # tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"Loss/train", "Loss/val", "learning_rate", "Throughput/tokens_per_second",
            "Throughput/supervised_tokens_per_second", "Data/padding_fraction",
            "Steps/overflow_skipped", "Throughput/model_tflops", "Data/wait_fraction"} <= set(events.Tags()["scalars"])
    # best/ is a plain Hugging Face folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "best")
    tokenizer = AutoTokenizer.from_pretrained(out / "best")
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == 50258
    assert model.config.pad_token_id == model.generation_config.pad_token_id == 50256
    assert model.generation_config.eos_token_id == 50258


def test_model_flops_of_a_run_counted_by_hand(reference, shards):
    """The summary's model TFLOP/s times its seconds is the run's model FLOPs, counted here from the rows
    the 8 steps drew (their stored sample lengths) and the tiny model's shapes: 6 x the parameters outside
    the tied head and the lookups per token, 6 x the head per label, 12 x layers x width x each sample's
    length^2 (PaLM's appendix B)."""
    from shards.format import ShardSet
    from train.model import NAMED_CONFIGS

    config, summary = reference
    shape = NAMED_CONFIGS["tiny"]
    layers, width = shape["n_layer"], shape["n_embd"]
    per_layer = 12 * width * width + 13 * width  # attention (4 d^2 + 4 d) and MLP (8 d^2 + 5 d) and 2 LayerNorms
    body = layers * per_layer + 2 * width  # and the final LayerNorm
    head = 50259 * width  # the vocabulary: GPT-2's and ChatML's two tokens; tied with the input embedding
    split = ShardSet.open(shards).split("train")
    order = RowOrder(split.num_rows, config.batch_size, seed=config.seed, shuffle=True)
    drawn = [int(r) for _ in range(8) for r in order.next_rows()]
    squares = sum(int(n) ** 2 for r in drawn for n in split.row(r).segment_lengths)
    assert summary["tokens"] == sum(len(split.row(r).input_ids) for r in drawn)
    expected = 6 * body * summary["tokens"] + 6 * head * summary["supervised_tokens"] + 12 * layers * width * squares
    assert summary["model_tflops"] * 1e12 * summary["train_seconds"] == pytest.approx(expected, rel=1e-9)


def test_resume_continues_exactly(reference, tmp_path):
    config, _ = reference
    out = tmp_path / "stopped"
    first = loop.train(dataclasses.replace(config, out=out, stop_after=4))
    assert first["steps"] == 4 and not first["completed"]
    assert json.loads((out / "last" / "trainer_state.json").read_text())["progress"]["step"] == 4
    loop.train(dataclasses.replace(config, out=out, resume=True))
    np.testing.assert_allclose(losses(out), losses(config.out), rtol=0, atol=1e-6)
    reference_val = {r["step"]: r["val_loss"] for r in read_metrics(config.out, "val")}
    resumed_val = {r["step"]: r["val_loss"] for r in read_metrics(out, "val")}
    assert sorted(resumed_val) == [3, 4, 6, 8]  # 4: where it stopped
    for step, loss in reference_val.items():
        assert abs(resumed_val[step] - loss) <= 1e-6


def test_sigkill_between_checkpoints_then_resume(reference, tmp_path):
    config, _ = reference
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "train", *cli_args(dataclasses.replace(config, out=out))]
    log = open(tmp_path / "stderr.txt", "wb")  # a file, not a pipe: a full pipe would stall the child
    child = subprocess.Popen(command, env=subprocess_env(), stdout=log, stderr=log)
    state = out / "last" / "trainer_state.json"
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and child.poll() is None:
        try:  # the child may be renaming last/ or writing a line right now: look again later
            saved = json.loads(state.read_text())["progress"]["step"]
            logged = [r["step"] for r in read_metrics(out)]
        except (OSError, json.JSONDecodeError):
            saved, logged = None, []
        if saved is not None and logged and logged[-1] > saved:
            child.send_signal(signal.SIGKILL)  # steps after the checkpoint are lost
            killed_at = (saved, logged[-1])
            break
        time.sleep(0.005)
    child.wait()
    log.close()
    assert killed_at is not None, "the run ended before it could be killed: " + (tmp_path / "stderr.txt").read_text()[-2000:]
    assert child.returncode == -signal.SIGKILL
    loop.train(dataclasses.replace(config, out=out, resume=True))  # in-process: one interpreter start less
    np.testing.assert_allclose(losses(out), losses(config.out), rtol=0, atol=1e-6)


def test_grad_accum_normalises_by_the_tokens_of_the_whole_step(shards, tmp_path):
    # one step over 8 rows == two micro-batches of 4 rows, because the loss of each is
    # divided by the supervised tokens of the whole step (not averaged per micro-batch)
    base = tiny_config(shards, tmp_path / "a", max_steps=2, eval_interval=2, dropout=0.0, batch_size=8)
    loop.train(base)
    loop.train(dataclasses.replace(base, out=tmp_path / "b", batch_size=4, grad_accum=2))
    np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-6)
    a, b = (load_file(tmp_path / run / "last" / "model.safetensors") for run in "ab")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaler", [True, False])
def test_overflowing_gradients_are_skipped_counted_and_logged(shards, tmp_path, monkeypatch, scaler):
    calls = {"n": 0}
    real = head.head_loss

    def overflow_on_third_call(hidden, targets, weight):
        calls["n"] += 1
        if calls["n"] == 3 and hidden.requires_grad:  # step 3's gradients become inf, its loss stays finite
            hidden.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return real(hidden, targets, weight)

    monkeypatch.setattr(head, "head_loss", overflow_on_third_call)
    # The fp16 GradScaler, on fp32 compute: CPU fp16 kernels are 8x slower, and the
    # scaler's skip is what is under test. Without a scaler (fp32/bf16) the loop skips itself.
    monkeypatch.setattr(setup, "resolve_precision", lambda precision, device: (None, scaler))
    summary = loop.train(tiny_config(shards, tmp_path / "fp16", max_steps=5, eval_interval=5))
    records = read_metrics(tmp_path / "fp16")
    assert [r["overflow_skipped_steps"] for r in records] == [0, 0, 1, 1, 1]
    assert summary["overflow_skipped_steps"] == 1 and summary["nan_loss_steps"] == 0
    assert all(np.isfinite(r["loss"]) for r in records)
    assert np.isfinite(summary["final_val_loss"])
    scale = torch.load(tmp_path / "fp16" / "last" / "optimizer.pt", weights_only=True)["scaler"].get("scale")
    assert scale == (2.0**15 if scaler else None)  # the scaler halved its scale on the skipped step


def test_nan_loss_stops_the_run_and_keeps_checkpoints(shards, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = head.head_loss

    def nan_from_step_3(hidden, targets, weight):
        calls["n"] += 1
        losses_ = real(hidden, targets, weight)
        return losses_ * float("nan") if hidden.requires_grad and calls["n"] >= 3 else losses_

    monkeypatch.setattr(head, "head_loss", nan_from_step_3)
    out = tmp_path / "nan"
    config = tiny_config(shards, out, max_steps=20, eval_interval=2, max_nan_steps=2)
    result = CliRunner().invoke(main, cli_args(config))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: the loss was NaN/inf for 3")
    assert "Traceback" not in result.output
    records = read_metrics(out)
    assert [r["nan_loss_steps"] for r in records] == [0, 0, 1, 2]  # step 5 raised before logging
    # the updates of the NaN steps were skipped: last/ (step 4) holds the weights of best/ (step 2)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["progress"]["step"] == 4
    best, last = (load_file(out / name / "model.safetensors") for name in ("best", "last"))
    for name in best:
        assert torch.isfinite(last[name]).all()
        torch.testing.assert_close(last[name], best[name], rtol=0, atol=0)


def named_command(stderr: str) -> TrainConfig:
    """The config of the command an error names ("continue it with: python -m train ...; ...")."""
    import shlex

    words = shlex.split(stderr.split("continue it with: ")[1].split(";")[0])
    assert words[:3] == ["python", "-m", "train"]
    return from_command_line(main.make_context("train", words[3:]).params)


def test_a_run_folder_is_not_reused_by_accident(reference):
    config, _ = reference
    result = CliRunner().invoke(main, cli_args(config))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "already holds a run: continue it" in result.stderr
    assert named_command(result.stderr) == dataclasses.replace(config, resume=True)  # the one command that works
    result = CliRunner().invoke(main, cli_args(dataclasses.replace(config, resume=True, seed=5)))
    assert result.exit_code == 1 and "--seed: the run used 1337, now 5" in result.stderr
    assert named_command(result.stderr) == dataclasses.replace(config, resume=True)


def test_atomic_folder_survives_a_kill_between_its_renames(tmp_path):
    import subprocess

    from shards.folders import recover_folder, staged_folder

    target = tmp_path / "last"
    with staged_folder(target) as folder:
        (folder / "a").write_text("1")
    # a writer (now dead) killed after `last` -> `.last.old-PID` and before `.last.tmp-PID` -> `last`:
    writer = subprocess.Popen(["true"])
    writer.wait()
    target.rename(tmp_path / f".last.old-{writer.pid}")
    (tmp_path / f".last.tmp-{writer.pid}").mkdir()
    (tmp_path / f".last.tmp-{writer.pid}" / "a").write_text("half")
    recover_folder(target)
    assert (target / "a").read_text() == "1"
    with staged_folder(target) as folder:
        (folder / "a").write_text("2")
    assert (target / "a").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_bad_options_are_listed_together():
    result = CliRunner().invoke(main, ["--shards", "x", "--batch-size", "0", "--stop-after", "0"])
    assert result.exit_code == 1
    assert result.stderr == ("error: 2 problems with the train options: --batch-size: must be at least 1, got 0; "
                             "--stop-after: must be between 1 and --max-steps (10000), got 0\n")


def test_cli_help_documents_every_option():
    text = CliRunner().invoke(main, ["--help"], terminal_width=200).output
    for field in dataclasses.fields(TrainConfig):
        assert flag(field.name) in text
        assert field.metadata["help"].split()[0] in text



def test_eval_batch_size_and_adam_betas(shards, tmp_path):
    """--eval-batch-size changes how validation is batched, not its loss; --adam-beta1/2 reach AdamW."""
    runs = {size: loop.train(tiny_config(shards, tmp_path / f"eval{size}", max_steps=2, eval_interval=2,
                                         eval_batch_size=size, adam_beta1=0.8, adam_beta2=0.95))
            for size in (1, 5)}
    assert runs[1]["final_val_loss"] == pytest.approx(runs[5]["final_val_loss"], rel=1e-6)
    state = torch.load(tmp_path / "eval1" / "last" / "optimizer.pt", weights_only=True)["optimizer"]
    assert {tuple(group["betas"]) for group in state["param_groups"]} == {(0.8, 0.95)}
    assert {group["fused"] for group in state["param_groups"]} == {True}  # on a CPU too (train.step.make_optimizer)
    problems = TrainConfig(shards=shards, eval_batch_size=0, adam_beta2=1.0)
    with pytest.raises(Exception, match="--eval-batch-size: must be at least 1.*--adam-beta2: must be in"):
        problems.validate()

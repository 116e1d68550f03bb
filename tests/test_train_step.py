"""The lean step: skipped updates leave the schedule alone and stop a run that only skips;
exact resume on the varlen path and under --compile; --flatten and auto in the summary."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train_helpers import cli_args, one_thread, read_metrics, tiny_config, write_shard_set  # noqa: F401
from train import head, loop
from train.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("shards") / "concat-64", "concat", max_length=64,
                           train_samples=48, val_samples=8)


def inf_gradients_on(monkeypatch, steps: set) -> None:
    """The gradients of these training steps (1-based, one micro-batch each) become inf; losses stay finite."""
    calls = {"n": 0}
    real = head.head_loss

    def patched(hidden, targets, weight):
        if hidden.requires_grad:
            calls["n"] += 1
            if calls["n"] in steps:
                hidden.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return real(hidden, targets, weight)

    monkeypatch.setattr(head, "head_loss", patched)


def test_a_skipped_update_does_not_move_the_schedule(shards, tmp_path, monkeypatch):
    inf_gradients_on(monkeypatch, {3})
    out = tmp_path / "skip"
    summary = loop.train(tiny_config(shards, out, max_steps=5, eval_interval=5, warmup_steps=4))
    records = read_metrics(out)
    # the learning rate a step used: warm-up 0, 1/4, 2/4, then 2/4 again (step 3 did not count), 3/4
    np.testing.assert_allclose([r["learning_rate"] for r in records], [0, 2.5e-4, 5e-4, 5e-4, 7.5e-4])
    assert summary["overflow_skipped_steps"] == 1 and records[-1]["overflow_skipped_steps"] == 1
    state = torch.load(out / "last" / "optimizer.pt", weights_only=True)["scheduler"]
    assert state["last_epoch"] == 4  # five steps, four updates


def test_consecutive_skipped_updates_stop_the_run(shards, tmp_path, monkeypatch):
    inf_gradients_on(monkeypatch, set(range(3, 100)))
    config = tiny_config(shards, tmp_path / "stuck", max_steps=20, eval_interval=2, max_nan_steps=2)
    result = CliRunner().invoke(main, cli_args(config))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: the update was skipped (inf/NaN gradients) for 3 consecutive steps "
                                    "(up to step 5; --max-nan-steps 2)")


def run_stopped_and_resumed(config, tmp_path) -> tuple:
    reference = loop.train(config)
    out = tmp_path / "stopped"
    loop.train(dataclasses.replace(config, out=out, stop_after=config.max_steps // 2))
    resumed = loop.train(dataclasses.replace(config, out=out, resume=True))
    return reference, resumed, [r["loss"] for r in read_metrics(config.out)], [r["loss"] for r in read_metrics(out)]


@pytest.mark.parametrize("flatten", [False, True])
def test_varlen_resumes_exactly(shards, tmp_path, flatten):
    config = tiny_config(shards, tmp_path / "reference", attention="varlen", flatten=flatten)
    reference, resumed, expected, got = run_stopped_and_resumed(config, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert resumed["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-6)
    assert (reference["attention"], reference["flatten"]) == ("varlen", flatten)
    if flatten:
        assert reference["padding_fraction"] == 0  # padding-free: no slot wasted


def test_auto_takes_varlen_on_cpu_and_says_so(shards, tmp_path, capsys):
    summary = loop.train(tiny_config(shards, tmp_path / "auto", max_steps=1, eval_interval=1))
    assert summary["attention"] == "varlen" and "--attention auto: varlen" in capsys.readouterr().out


@pytest.mark.slow
def test_compile_trains_and_resumes_exactly_without_recompiling(shards, tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    compiled = {True: [], False: []}  # frames torch.compile had compiled at each train / val forward
    real = head.head_loss

    def counting(hidden, targets, weight):
        compiled[hidden.requires_grad].append(counters["frames"]["total"])
        return real(hidden, targets, weight)

    monkeypatch.setattr(head, "head_loss", counting)
    config = tiny_config(shards, tmp_path / "reference", attention="varlen", compile=True, max_steps=4,
                         eval_interval=2)
    reference, resumed, expected, got = run_stopped_and_resumed(config, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert reference["compile"] and reference["attention"] == "varlen" and expected[-1] < expected[0]
    assert resumed["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-6)
    # batches of other sample lengths reach the same compiled graphs: the varlen index is no graph input
    train = compiled[True]
    assert train[1] == train[0] and train[3] == train[2]

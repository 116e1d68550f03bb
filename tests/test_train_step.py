"""The lean step: skipped updates leave the schedule alone and stop a run that only skips;
exact resume on the varlen path and under --compile; --flatten and auto in the summary; the AdamW
groups (no decay on biases, norms and embeddings; --decay-all) read from the optimizer."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train_helpers import cli_args, one_thread, read_metrics, tiny_config, write_shard_set  # noqa: F401
from train import head, loop, setup
from train.__main__ import main
from train.step import Dist

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


def no_decay_names(model) -> set[str]:
    """The convention spelled by name: biases, LayerNorm weights (ln_*), the embeddings (wte, wpe)."""
    return {n for n, _ in model.named_parameters()
            if n.endswith(".bias") or ".ln_" in n or ".wte." in n or ".wpe." in n}


@pytest.mark.parametrize("model", ["tiny", "tiny-untied"])
def test_weight_decay_spares_biases_norms_and_embeddings(shards, tmp_path, model):
    config = tiny_config(shards, tmp_path / model, model=model, weight_decay=0.1)
    run = setup.build(config, Dist())
    names = {id(p): n for n, p in run.model.named_parameters()}
    decayed, spared = run.optimizer.param_groups
    assert (decayed["weight_decay"], spared["weight_decay"]) == (0.1, 0.0)
    assert {names[id(p)] for p in spared["params"]} == no_decay_names(run.model)
    assert {names[id(p)] for p in decayed["params"]} == set(names.values()) - no_decay_names(run.model)
    assert ("lm_head.weight" in {names[id(p)] for p in decayed["params"]}) == (model == "tiny-untied")
    summary = loop.train(dataclasses.replace(config, max_steps=1, eval_interval=1))
    counts = {n: p.numel() for n, p in run.model.named_parameters()}
    spared_count = sum(counts[n] for n in no_decay_names(run.model))
    assert summary["weight_decay_groups"] == [
        {"weight_decay": 0.1, "tensors": len(counts) - len(no_decay_names(run.model)),
         "parameters": sum(counts.values()) - spared_count},
        {"weight_decay": 0.0, "tensors": len(no_decay_names(run.model)), "parameters": spared_count}]


def test_decay_all_keeps_the_source_articles_single_group(shards, tmp_path):
    run = setup.build(tiny_config(shards, tmp_path / "all", decay_all=True, weight_decay=0.1), Dist())
    (group,) = run.optimizer.param_groups
    assert group["weight_decay"] == 0.1 and len(group["params"]) == len(list(run.model.parameters()))


def test_resume_refuses_a_checkpoint_saved_with_one_group(shards, tmp_path):
    """A last/ of the single-group era (decay on everything) cannot be resumed exactly: refused, with why."""
    out = tmp_path / "old"
    loop.train(tiny_config(shards, out, decay_all=True, max_steps=4, stop_after=2, eval_interval=2))
    saved = json.loads((out / "config.json").read_text())
    del saved["decay_all"]  # the option did not exist then
    (out / "config.json").write_text(json.dumps(saved))
    result = CliRunner().invoke(main, cli_args(tiny_config(shards, out, max_steps=4, eval_interval=2, resume=True)))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: --resume: {out / 'last'} holds 1 AdamW parameter group(s) and this run "
                                    "makes 2")


def test_group_by_length_trains_with_less_padding_and_resumes_exactly(tmp_path):
    shards = write_shard_set(tmp_path / "padding-64", "padding", max_length=64, train_samples=48, val_samples=8)
    plain = loop.train(tiny_config(shards, tmp_path / "plain", attention="varlen", max_steps=12))
    config = tiny_config(shards, tmp_path / "reference", attention="varlen", max_steps=12, eval_interval=6,
                         group_by_length=True)
    reference, resumed, expected, got = run_stopped_and_resumed(config, tmp_path)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert resumed["final_val_loss"] == pytest.approx(reference["final_val_loss"], abs=1e-6)
    assert reference["group_by_length"] and not plain["group_by_length"]
    assert reference["tokens"] == plain["tokens"]  # 12 steps of 4 rows: the same 48 rows of the first epoch ...
    assert reference["padding_fraction"] < plain["padding_fraction"] / 2  # ... in batches of like lengths

"""--activation-checkpointing and --fsdp (train/fsdp.py): the same losses as one process and as DDP, each rank
holding about half the model, best/ a plain Hugging Face folder, last/ a DCP folder that resumes exactly."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sftcli import ConfigError
from tests.train_helpers import (cli_args, one_thread, read_metrics, shards, subprocess_env,  # noqa: F401
                                 tiny_config, write_shard_set)
from train import loop
from train.fsdp import start_weights, transformer_blocks
from train.model import ModelError
from train.step import Dist

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train"]


def torchrun(config) -> None:
    launched = subprocess.run([*TORCHRUN, *cli_args(config)], env=subprocess_env(), capture_output=True, text=True,
                              timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]


def losses(out, kind: str = "train", key: str = "loss") -> dict:
    return {r["step"]: r[key] for r in read_metrics(out, kind)}


def assert_same_losses(ours, theirs, rtol: float, grad_norm_rtol: float | None = None) -> None:
    """Train and val losses to `rtol`; grad norms to `grad_norm_rtol` (default `rtol`)."""
    for kind, key, tolerance in (("train", "loss", rtol), ("train", "grad_norm", grad_norm_rtol or rtol),
                                 ("val", "val_loss", rtol)):
        a, b = losses(ours, kind, key), losses(theirs, kind, key)
        steps = sorted(set(a) & set(b))
        assert len(steps) >= 2, (kind, a, b)
        np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], rtol=tolerance,
                                   err_msg=f"{kind} {key}")


@pytest.mark.usefixtures("one_thread")
def test_activation_checkpointing_gives_the_same_losses_gradients_and_weights(shards, tmp_path):
    """Dropout on: the checkpoint replays the block's RNG, so even the recomputed masks are the same."""
    plain = tiny_config(shards, tmp_path / "plain", max_steps=4, eval_interval=2)
    checkpointed = dataclasses.replace(plain, out=tmp_path / "checkpointed", activation_checkpointing=True)
    loop.train(plain)
    summary = loop.train(checkpointed)
    assert summary["activation_checkpointing"] is True
    assert_same_losses(checkpointed.out, plain.out, rtol=1e-5)
    ours, theirs = (load_file(run.out / "last" / "model.safetensors") for run in (checkpointed, plain))
    assert ours.keys() == theirs.keys()  # the wrapper's prefix never reaches a checkpoint
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)


def test_fsdp_refusals_are_one_line_each():
    config = tiny_config("s", "o", fsdp=True)
    for change, words in ((dict(compile=True), "--fsdp: cannot be combined with --compile"),
                          (dict(precision="fp16"), "--fsdp: cannot run --precision fp16")):
        with pytest.raises(ConfigError) as refused:
            dataclasses.replace(config, **change).validate()
        assert words in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(ModelError, match=r"^--fsdp: Sequential has no list of transformer blocks .* without --fsdp$"):
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), "--fsdp")

    class Elsewhere(Dist):  # the other process built its model from another folder: one parameter fewer
        def gather(self, value):
            return [value, value[1:]]

    with pytest.raises(ModelError, match=r"^--fsdp: the processes built different models from --model; give every "):
        start_weights(torch.nn.Sequential(torch.nn.Linear(2, 2)), Elsewhere())


def test_parallel_fsdp_is_fsdp_and_other_values_are_one_error_line(monkeypatch):
    """`--parallel fsdp` is `--fsdp`; `--parallel ddp` (or nothing) is DDP; anything else, or a contradiction,
    is one `error:` line before anything runs."""
    from click.testing import CliRunner

    from train.__main__ import main

    started = []
    monkeypatch.setattr(loop, "train", lambda config: started.append(config.fsdp) or {"stopped": None})
    for given, sharded in ((["--parallel", "fsdp"], True), (["--parallel", "ddp"], False), ([], False),
                           (["--fsdp"], True)):
        assert CliRunner().invoke(main, ["--shards", "s", *given]).exit_code == 0
        assert started.pop() is sharded, given
    for given, words in ((["--parallel", "tp"], "--parallel: must be ddp or fsdp, got 'tp'"),
                         (["--parallel", "ddp", "--fsdp"], "--parallel ddp contradicts --fsdp")):
        outcome = CliRunner().invoke(main, ["--shards", "s", *given])
        assert outcome.exit_code == 1 and outcome.output.startswith(f"error: {words}"), outcome.output
        assert outcome.output.count("\n") == 1
    assert not started


@pytest.mark.parametrize("kind", ["fsdp", "ddp"])
def test_gradients_are_exchanged_on_the_last_micro_batch_only(shards, tmp_path, kind):
    """3 micro-batches: FSDP2's reduce-scatter (`set_requires_gradient_sync`) and DDP's all-reduce (outside
    `no_sync()`) run on the third only; the step's loss is the same as without either wrapper."""
    from contextlib import contextmanager

    from train import setup
    from train.step import backward

    class Spy(torch.nn.Module):  # what fully_shard or DDP makes of the loss model, recording each forward's sync
        def __init__(self, inner):
            super().__init__()
            self.inner, self.sync, self.seen = inner, True, []

        def forward(self, **inputs):
            self.seen.append(self.sync)
            return self.inner(**inputs)

    if kind == "fsdp":
        Spy.set_requires_gradient_sync = lambda self, sync: setattr(self, "sync", sync)
    else:
        @contextmanager
        def no_sync(self):
            self.sync = False
            yield
            self.sync = True
        Spy.no_sync = no_sync
    run = setup.build(tiny_config(shards, tmp_path / "run", grad_accum=3, dropout=0.0), Dist())
    batches = run.draw()[0]
    spy = Spy(run.loss_model)
    options = dict(loss_scale=1.0, autocast=run.autocast, scaler=run.scaler)
    ours = backward(spy, run.loss_model, batches, **options)
    assert spy.seen == [False, False, True]
    torch.testing.assert_close(ours, backward(run.loss_model, run.loss_model, batches, **options))


@pytest.mark.usefixtures("one_thread")
def test_an_empty_model_sharded_and_filled_from_rank_0_computes_what_the_loaded_one_does(tmp_path):
    """What every process but rank 0 does under --fsdp, here in a one-process group: a Llama-shaped model built
    on the meta device (no weights in memory), sharded, allocated and filled with the loaded model's weights and
    its rotary frequencies (buffers no state dict holds) holds exactly the loaded model's weights and buffers."""
    import socket

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.train_helpers import chatml_tokenizer
    from torch.distributed.tensor import DTensor

    from train.fsdp import shard, spread_weights, start_weights
    from train.head import LabelLossModel
    from train.model import empty_model, load_model

    LlamaForCausalLM(LlamaConfig(vocab_size=50000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "llama")
    options = dict(pad_vocab_to=64, attention="eager")  # resized from 50000 to the tokenizer's 50259, padded
    loaded, empty = (make(str(tmp_path / "llama"), chatml_tokenizer(), **options) for make in (load_model, empty_model))
    assert all(p.is_meta for p in empty.parameters()) and empty.config.vocab_size == loaded.config.vocab_size == 50304
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        weights = start_weights(loaded, Dist())
        expected = {k: v.clone() for k, v in weights["state"].items()}  # the broadcast leaves shards in their place
        loss_model = LabelLossModel(empty)
        shard(loss_model, empty, None, torch.device("cpu"))
        spread_weights(loss_model, empty, weights, torch.device("cpu"))
        ids = torch.arange(1, 33)[None]
        inputs = dict(input_ids=ids, position_ids=torch.arange(32)[None], labels=ids)
        with torch.no_grad():  # the root is the loss model: it gathers the embeddings and the head
            torch.testing.assert_close(loss_model.eval()(**inputs), LabelLossModel(loaded).eval()(**inputs),
                                       rtol=1e-5, atol=0)  # the same weights; the gathered head sums in its order
        gathered = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in empty.state_dict().items()}
        assert gathered.keys() == expected.keys() and all(torch.equal(gathered[k], expected[k]) for k in expected)
        buffers = dict(loaded.named_buffers())
        assert buffers and all(torch.equal(b, buffers[name]) for name, b in empty.named_buffers())
    finally:
        torch.distributed.destroy_process_group()


def test_transformer_blocks_are_found_by_shape_in_gpt2_and_llama():
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=3, n_head=2, n_embd=16, vocab_size=64))
    llama = AutoModelForCausalLM.from_config(LlamaConfig(num_hidden_layers=3, hidden_size=16, intermediate_size=32,
                                                         num_attention_heads=4, num_key_value_heads=2,
                                                         vocab_size=64))
    assert transformer_blocks(gpt2, "--fsdp") is gpt2.transformer.h
    assert transformer_blocks(llama, "--fsdp") is llama.model.layers


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fsdp_matches_ddp_and_one_process_and_shards_the_parameters(tmp_path):
    """5 steps, fp32, dropout 0, varlen attention and the label-only head: --fsdp on 2 ranks, DDP on 2 ranks and
    one process give the same losses; each rank holds about half the parameters; best/ is a plain folder."""
    from transformers import AutoModelForCausalLM

    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    single = tiny_config(shards, tmp_path / "one", max_steps=5, eval_interval=2, dropout=0.0, attention="varlen")
    ddp, fsdp = (dataclasses.replace(single, out=tmp_path / name, fsdp=name == "fsdp") for name in ("ddp", "fsdp"))
    one = loop.train(single)
    torchrun(ddp)
    torchrun(fsdp)
    assert_same_losses(ddp.out, single.out, rtol=1e-5)
    # the norm of sharded gradients is summed per shard, then over ranks: another order, ~2e-5 apart
    assert_same_losses(fsdp.out, single.out, rtol=1e-5, grad_norm_rtol=1e-4)
    summary = json.loads((fsdp.out / "summary.json").read_text())
    assert summary["fsdp"] is True and summary["world_size"] == 2
    total = one["rank_memory_bytes"][0]["parameter_numel"]
    ranks = [r["parameter_numel"] for r in summary["rank_memory_bytes"]]
    assert len(ranks) == 2 and sum(ranks) == total and max(ranks) <= 1.1 * total / 2, (ranks, total)
    assert all(r["optimizer"] <= 1.1 * one["rank_memory_bytes"][0]["optimizer"] / 2 for r in summary["rank_memory_bytes"])
    ddp_summary = json.loads((ddp.out / "summary.json").read_text())
    assert [r["parameter_numel"] for r in ddp_summary["rank_memory_bytes"]] == [total, total]
    # best/ from rank 0's gathered weights: the file a plain run writes, loadable by from_pretrained
    ours, theirs = (load_file(run.out / "best" / "model.safetensors") for run in (fsdp, single))
    assert ours.keys() == theirs.keys()
    loaded, reference = (AutoModelForCausalLM.from_pretrained(run.out / "best").eval() for run in (fsdp, single))
    ids = torch.arange(1, 33)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert (fsdp.out / "last" / "dcp" / ".metadata").is_file() and not (fsdp.out / "last" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fsdp_last_resumes_exactly_on_two_ranks_and_on_one_process(tmp_path):
    """A 2-rank --fsdp --activation-checkpointing run stopped after a checkpoint: resumed on 2 ranks it gives the
    uninterrupted run's losses exactly; resumed in one process (DCP reshards) the same losses to 1e-5. The
    uninterrupted run also matches one process without either flag (checkpointing changes nothing)."""
    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    plain = tiny_config(shards, tmp_path / "plain", max_steps=5, eval_interval=2, dropout=0.0)
    whole, stopped = (dataclasses.replace(plain, out=tmp_path / name, fsdp=True, activation_checkpointing=True)
                      for name in ("whole", "stopped"))
    loop.train(plain)
    torchrun(whole)
    torchrun(dataclasses.replace(stopped, stop_after=3))
    assert json.loads((stopped.out / "last" / "trainer_state.json").read_text())["progress"]["step"] == 3
    moved = tmp_path / "moved"  # a copy of the stopped run, resumed by one process
    shutil.copytree(stopped.out, moved)
    saved = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**saved, "out": str(moved)}))
    torchrun(dataclasses.replace(stopped, resume=True))
    loop.train(dataclasses.replace(stopped, out=moved, resume=True))
    assert_same_losses(whole.out, plain.out, rtol=1e-5, grad_norm_rtol=1e-4)
    for kind, key in (("train", "loss"), ("val", "val_loss")):
        exact, uninterrupted = losses(stopped.out, kind, key), losses(whole.out, kind, key)
        assert {s: exact[s] for s in uninterrupted} == uninterrupted, kind
    resumed_alone = losses(moved, "train")
    steps = [4, 5]
    np.testing.assert_allclose([resumed_alone[s] for s in steps], [losses(whole.out)[s] for s in steps], rtol=1e-5)
    assert json.loads((moved / "summary.json").read_text())["world_size"] == 1


@pytest.mark.usefixtures("one_thread")
def test_one_process_fsdp_keeps_the_dcp_format_and_refuses_a_broken_one(shards, tmp_path):
    """One process shards nothing under --fsdp, but last/ is DCP all the same; --resume without --fsdp is refused
    in one line that gives the command with it; with a shard file gone, --resume stops with one line saying how
    to move it aside."""
    config = tiny_config(shards, tmp_path / "run", max_steps=2, eval_interval=2, fsdp=True)
    loop.train(config)
    last = config.out / "last"
    assert sorted(p.name for p in last.iterdir()) == ["chat_template.jinja", "config.json", "dcp", "extra.pt",
                                                      "tokenizer.json", "tokenizer_config.json", "trainer_state.json"]
    with pytest.raises(ConfigError, match=r"^--resume with options that change the run: --fsdp: the run used True, "
                                          r"now False; continue it with: python -m train .* --fsdp .*--resume"):
        loop.train(dataclasses.replace(config, max_steps=3, resume=True, fsdp=False))  # DCP's last/ needs --fsdp
    for part in (last / "dcp").glob("*.distcp"):
        part.unlink()
    with pytest.raises(ConfigError, match=r"^--resume: .* is not a complete checkpoint .* move it aside"):
        loop.train(dataclasses.replace(config, max_steps=3, resume=True))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_llama_shaped_model_under_fsdp_matches_ddp_and_one_process_with_two_micro_batches(tmp_path):
    """GQA (4 query heads, 2 key/value heads), an untied head, varlen attention and the label-only head, 5 steps,
    fp32, dropout 0, 2 micro-batches a step (the gradients are exchanged on the second only): --fsdp
    --activation-checkpointing on 2 ranks, DDP on 2 ranks and one process give the same losses and the same
    weights (best/, saved at the last step) to 1e-5."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=50259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                 max_position_embeddings=128)).save_pretrained(folder)
    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    single = tiny_config(shards, tmp_path / "one", model=str(folder), max_steps=5, eval_interval=4,
                         attention="varlen", grad_accum=2, dropout=0.0)
    ddp = dataclasses.replace(single, out=tmp_path / "ddp")
    sharded = dataclasses.replace(single, out=tmp_path / "fsdp", fsdp=True, activation_checkpointing=True)
    loop.train(single)
    torchrun(ddp)
    torchrun(sharded)
    assert_same_losses(ddp.out, single.out, rtol=1e-5)
    assert_same_losses(sharded.out, single.out, rtol=1e-5, grad_norm_rtol=1e-4)
    assert sorted(losses(sharded.out)) == [1, 2, 3, 4, 5]
    theirs = load_file(single.out / "best" / "model.safetensors")
    for run in (single, ddp, sharded):
        assert json.loads((run.out / "best" / "trainer_state.json").read_text())["progress"]["step"] == 5
    for run in (ddp, sharded):
        ours = load_file(run.out / "best" / "model.safetensors")
        assert ours.keys() == theirs.keys() and "lm_head.weight" in ours  # untied: a head of its own
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=f"{run.out.name} {name}")

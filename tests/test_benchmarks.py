"""The benchmarks' correctness, never their timings: each section on a tiny input compares what it
claims to compare (the same rows, the same texts, the same tokens), and the reports render."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks import bench_packing, common, gpu, loading, prep_speed, report, suite, training
from benchmarks.__main__ import main as bench_main
from shards.manifest import read_manifest


@pytest.fixture(scope="module")
def records():
    return common.sample_records(40)


@pytest.fixture(scope="module")
def prep_section(tmp_path_factory, records):
    """Section 1 on 80 rows (40 records twice), with TRL where it is installed."""
    work = tmp_path_factory.mktemp("prep")
    data = common.write_copies(work / "data.jsonl", records, 2)
    warmup = common.write_copies(work / "warmup.jsonl", records[:4], 1)
    result, lengths = prep_speed.measure(data, warmup, work, max_length=256, repeats=1,
                                         with_trl=prep_speed.trl_available())
    return result, lengths, work


def test_floor_and_prep_see_the_same_rows_texts_and_tokens(prep_section):
    result, lengths, _ = prep_section
    assert result["checks"] == {"same_rows": True, "same_sample_tokens": True, "prep_tokens_are_truncated_samples": True}
    assert result["samples"] == 80 == len(lengths)
    assert result["sample_tokens"] == int(lengths.sum())
    assert result["prep_tokens"] == int(np.minimum(lengths, 256).sum())
    assert result["prep_over_tokenizer_floor"] > 0


def test_the_floor_tokenizes_exactly_the_texts_prep_encodes(tmp_path, records):
    """Per sample, the floor's ids (whole rendered text) are prep's ids (segment by segment)."""
    from prep.template import ConversationEncoder

    tok = prep_speed.tokenizer()
    convs = prep_speed.conversations(common.write_copies(tmp_path / "data.jsonl", records[:10], 1))
    ids, _, offsets = ConversationEncoder(tok).encode(convs)
    texts = prep_speed.render(tok, convs)
    floor_ids = prep_speed.floor(tok, texts)
    assert prep_speed.floor_batched(tok, texts, batch_size=3) == floor_ids
    for k, row in enumerate(floor_ids):
        assert row == ids[offsets[k]:offsets[k + 1]].tolist()


def test_trl_prepares_the_same_rows_with_the_same_tokens(prep_section):
    pytest.importorskip("trl")
    result, _, _ = prep_section
    trl = result["trl"]
    assert trl["checks"] == {"same_samples": True, "same_tokens": True, "same_supervised_tokens": True}
    assert trl["trl_samples"] == 80
    assert trl["trl_supervised_tokens"] == result["prep_supervised_tokens"]


def test_trl_template_renders_the_text_prep_supervises(records):
    """The template given to TRL only adds {% generation %} markers: the text is prep's, to the byte."""
    tok = prep_speed.tokenizer()
    conversations = [[("user", r["instruction"]), ("assistant", r["output"])] for r in records[:10]]
    conversations.append([("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo"), ("user", "Bye"),
                          ("assistant", "Ciao")])
    for conv in conversations:
        messages = prep_speed.as_messages(conv)
        for upto, prompt in ((len(messages), False), (len(messages) - 1, True)):
            ours = tok.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)
            theirs = tok.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt,
                                             chat_template=prep_speed.CHATML_GENERATION_TEMPLATE)
            assert ours == theirs


def test_packing_section_gets_the_real_lengths(prep_section):
    """bench_packing on prep's lengths packs into exactly the rows prep wrote (val-ratio 0, nothing dropped)."""
    result, lengths, work = prep_section
    manifest = read_manifest(work / "shards" / "prep-concat-256")
    assert manifest.stats.dropped == {}
    packing = bench_packing.run(lengths, max_lengths=(256,), repeats=1, synthetic_count=1000, synthetic_repeats=1)
    r = packing[256]
    assert r["samples"] == 80 and r["padding_rows"] == 80
    assert r["concat_bfd_rows"] == manifest.stats.rows == result["prep_rows"]
    assert r["lower_bound_rows"] == manifest.stats.lower_bound_rows <= r["concat_bfd_rows"]


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, records):
    work = tmp_path_factory.mktemp("shards")
    data = common.write_copies(work / "data.jsonl", records, 1)
    return {mode: suite.build_shards(data, work / f"{mode}-64", mode, 64) for mode in training.MODES}


def test_training_section_compares_the_same_samples(small_shards):
    result = training.measure(small_shards, batch_size=2, steps=2)
    assert all(result["checks"].values()), result["checks"]
    assert set(result["by_mode"]) == set(training.MODES)
    assert result["concat_over_padding"] > 0 and result["packed_over_padding"] > 0
    for mode, r in result["by_mode"].items():
        assert math.isfinite(r["final_loss"]), mode
        assert 0 <= r["padding_fraction"] < 1


def test_training_checks_catch_different_inputs(small_shards):
    import dataclasses

    manifests = {mode: read_manifest(path) for mode, path in small_shards.items()}
    manifests["concat"] = dataclasses.replace(manifests["concat"], source_fingerprint="another file")
    assert training.check_same_samples(manifests)["same_source"] is False


def test_loading_section_batches_steps_and_memory_probe(small_shards):
    shards = small_shards["concat"]
    batch = loading.batch_seconds(shards, batch_size=2, count=3, warmup=1)
    assert batch["seconds"] > 0 and max(batch["widths"]) <= 64
    step = loading.step_seconds(shards, batch_size=2, repeats=1)
    assert step["seconds"] > 0 and all(math.isfinite(x) for x in step["loss_per_token"])
    probe = loading.rss_of_epoch(shards, batch_size=2)
    assert probe["batches"] == probe["rows"] // 2 and probe["peak_rss_bytes"] > 0
    assert probe["shard_bytes"] > 0


def test_gpu_flops_formula():
    from transformers import GPT2Config, GPT2LMHeadModel

    from train.model import NAMED_CONFIGS, padded_vocab_size

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=padded_vocab_size(50259, 64), **NAMED_CONFIGS["gpt2-124m"]))
    n = gpu.matmul_parameters(model)
    assert n == 123_653_376 + (50304 - 50257) * 768  # GPT-2 small without wpe, vocab padded to 64
    # nanoGPT's estimate_mfu: 6N + 12 L H Q T per token, T the sequence length.
    assert gpu.flops_per_token(n, 12, 768, 1024) == 6 * n + 12 * 12 * 768 * 1024
    # A full row of one sample costs what nanoGPT counts; the same tokens as 4 samples, less attention.
    one = gpu.model_flops(n, 12, 768, [1024])
    four = gpu.model_flops(n, 12, 768, [256] * 4)
    assert one == 1024 * gpu.flops_per_token(n, 12, 768, 1024)
    assert four == 1024 * gpu.flops_per_token(n, 12, 768, 256) < one


def test_gpu_step_logic_runs_on_cpu(small_shards):
    """The GPU section's measuring code, on CPU with the tiny model (its figures mean nothing here)."""
    peak = gpu.measured_peak_flops(torch.device("cpu"), torch.float32, size=64, repeats=2)
    r = gpu.run_config(small_shards["concat"], "bf16", torch.device("cpu"), steps=2, warmup=1, batch_size=2,
                       model_name="tiny", peak=peak)
    assert r["mfu"] > 0 and 0 < r["data_fraction"] < 1
    assert r["data_seconds"] + r["compute_seconds"] == pytest.approx(r["step_seconds"], rel=0.5)
    assert math.isfinite(r["final_loss"])


def test_gpu_without_cuda_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    outcome = CliRunner().invoke(gpu.main, [])
    assert outcome.exit_code == 0
    assert len(outcome.output.strip().splitlines()) == 1 and "no CUDA device" in outcome.output


def _results(figures: list[dict]) -> dict:
    return {"machine": common.machine(), "versions": common.versions(), "figures": figures,
            "finished": "2026-01-01T00:00:00+00:00", "seconds": 1.0, "load_average": {"start": [1], "end": [1]},
            "settings": {"quick": False}, "sections": {}, "skipped": {"trl": "not installed"}}


def test_markdown_table_shows_each_figure_its_goal_and_verdict(tmp_path):
    figures = [report.figure("prep", "prep_over_tokenizer_floor", 1.2, goal=("<=", 1.3)),
               report.figure("training", "concat_over_padding", 1.1, goal=(">=", 1.4)),
               report.figure("loading", "batch_ms_256", 0.4, "ms")]
    text = report.markdown(_results(figures))
    assert "| prep | `prep_over_tokenizer_floor` | 1.2 | ≤ 1.3 | pass |" in text
    assert "| training | `concat_over_padding` | 1.1 | ≥ 1.4 | MISS |" in text
    assert "| loading | `batch_ms_256` | 0.4 ms |  |  |" in text
    assert "Not measured: trl: not installed." in text
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(figures)))
    outcome = CliRunner().invoke(bench_main, ["--markdown", str(path)])
    assert outcome.exit_code == 0 and outcome.output == text


def test_settings_reject_bad_options():
    with pytest.raises(ValueError) as raised:
        suite.Settings(repeats=0, sections=("prep", "gpu")).validate()
    assert "--repeats must be at least 1" in str(raised.value) and "unknown sections ['gpu']" in str(raised.value)


@pytest.mark.slow
def test_quick_run_writes_results_with_every_section(tmp_path):
    out = tmp_path / "results.json"
    outcome = CliRunner().invoke(bench_main, ["--quick", "--no-trl", "--out", str(out), "--work", str(tmp_path / "w")])
    assert outcome.exit_code == 0, outcome.output
    results = json.loads(out.read_text())
    assert set(results["sections"]) == set(suite.SECTIONS)
    assert {"platform", "cpu_count", "python"} <= set(results["machine"])
    assert {"torch", "transformers", "tokenizers", "pyarrow", "numpy"} <= set(results["versions"])
    names = {f["name"] for f in results["figures"]}
    assert {"prep_over_tokenizer_floor", "concat_rows_over_bound_256", "concat_rows_over_bound_1024",
            "load_over_step_256", "load_over_step_1024", "rss_growth", "concat_over_padding"} <= names
    checks = [f for f in results["figures"] if f["name"] == "same_rows_and_tokens"]
    assert checks and all(f["passed"] for f in checks)
    assert "prep_over_tokenizer_floor" in outcome.output


@pytest.mark.parametrize("module", [common, report, gpu])
def test_docstring_examples(module):
    """`make test` collects doctests from prep/, shards/ and train/ only: run the benchmarks' here."""
    import doctest

    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0

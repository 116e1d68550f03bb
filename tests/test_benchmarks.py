"""The benchmarks' correctness, never their timings: each section on a tiny input compares what it
claims to compare (the same rows, the same texts, the same tokens), and the reports render."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks import common, gpu, kernels, loading, packing, prep_floor, prep_speed, report, training
from benchmarks.__main__ import SECTIONS, main as bench_main
from shards.manifest import read_manifest


@pytest.fixture(scope="module")
def records():
    return common.sample_records(40)


@pytest.fixture(scope="module")
def prep_section(tmp_path_factory, records):
    """The prep section on 80 rows (40 records twice), TRL included (trl is in the dev extra), and prep with
    Llama 3's tokenizer where the real-tokenizer corpus is built (`make corpus`)."""
    work = tmp_path_factory.mktemp("prep")
    data = common.write_copies(work / "data.jsonl", records, 2)
    doubled = common.write_copies(work / "doubled.jsonl", records, 4)
    warmup = common.write_copies(work / "warmup.jsonl", records[:4], 1)
    result = prep_speed.measure(data, doubled, warmup, work, max_length=256, repeats=1, with_trl=True,
                                llama3=prep_speed.llama3_args()[0])
    return result, np.array(prep_floor.sample_lengths(data)), work


def test_floor_prep_and_trl_see_the_same_rows_and_tokens(prep_section):
    result, lengths, _ = prep_section
    llama3 = {"prep_llama3_same_rows": True, "prep_llama3_encoder_is_tiktoken": True} \
        if prep_speed.llama3_args()[0] else {}
    assert result["checks"] == {"same_rows": True,
                                "prep_tokens_are_truncated_samples": True, "trl_same_samples": True, "trl_same_tokens": True,
                                "trl_same_supervised_tokens": True, **llama3}
    assert result["samples"] == 80 == len(lengths)
    seconds = result["seconds"]
    assert set(seconds) == {"prep", "prep_cores", "floor", "trl_num_proc_none",
                            f"trl_num_proc_{len(os.sched_getaffinity(0))}", *(["prep_llama3"] if llama3 else [])}
    # one round: each ratio is that round's own (the median of one)
    assert result["prep_over_floor"] == seconds["prep"][0] / seconds["floor"][0]
    trl = min(seconds["trl_num_proc_none"][0], seconds[f"trl_num_proc_{len(os.sched_getaffinity(0))}"][0])
    assert result["trl_over_prep"] == trl / seconds["prep_cores"][0]  # prep on every core, as TRL at its best
    assert result["prep_one_over_cores"] == seconds["prep"][0] / seconds["prep_cores"][0]
    names = {f["name"]: f for f in prep_speed.figures(result)}
    assert {"prep_over_floor", "trl_over_prep", "prep_anon_growth_mib", "same_rows_and_tokens"} <= set(names)
    assert names["prep_over_floor"]["goal"] == {"op": "<=", "value": 1.25}
    assert "prep_over_tiktoken_floor" not in names  # a floor prep beat was no floor
    if llama3:
        assert result["prep_llama3_over_gpt2"] == seconds["prep_llama3"][0] / seconds["prep"][0]
        assert names["prep_llama3_over_gpt2"]["goal"] == {"op": "<=", "value": 1.3}
    else:
        assert "prep_llama3_over_gpt2" not in names


def test_the_llama3_figure_is_skipped_with_a_reason_without_the_corpus(tmp_path, monkeypatch):
    from tests import real_tokenizers

    monkeypatch.setattr(real_tokenizers, "STAMP", tmp_path / "not-built")
    args, why = prep_speed.llama3_args()
    assert args == [] and "make corpus" in why and "Llama 3" in why


def test_the_floor_encodes_exactly_what_prep_encodes(tmp_path, records):
    """Per sample, the floor's token count is that of the chat template's whole text tokenized by the
    tokenizer itself (specials parsed), and the floor process prints the same counts."""
    import subprocess
    import sys

    data = common.write_copies(tmp_path / "data.jsonl", records[:10], 1)
    multi = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"},
                          {"role": "assistant", "content": "Ciao"}]}
    with open(data, "a") as f:
        f.write(json.dumps(multi) + "\n")
    tok = prep_speed.tokenizer()
    render = lambda conv: tok.apply_chat_template([{"role": r, "content": c} for r, c in conv], tokenize=False)  # noqa: E731
    expected = [len(tok(render(conv), add_special_tokens=False)["input_ids"]) for batch in prep_speed.conversations(data) for conv in batch]
    assert len(expected) == 11 and prep_floor.sample_lengths(data) == expected
    printed = subprocess.run([sys.executable, "-m", "benchmarks.prep_floor", str(data)], cwd=common.ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == expected


def test_trl_template_renders_the_text_prep_supervises(records):
    """The template given to TRL only adds {% generation %} markers: the text is prep's, to the byte."""
    tok = prep_speed.tokenizer()
    conversations = [[("user", r["instruction"]), ("assistant", r["output"])] for r in records[:10]]
    conversations.append([("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo"), ("user", "Bye"),
                          ("assistant", "Ciao")])
    for conv in conversations:
        messages = [{"role": r, "content": c} for r, c in conv]
        for upto, prompt in ((len(messages), False), (len(messages) - 1, True)):
            ours = tok.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt)
            theirs = tok.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=prompt,
                                             chat_template=prep_speed.CHATML_GENERATION_TEMPLATE)
            assert ours == theirs


def test_packing_section_gets_the_real_lengths(prep_section):
    """packing.run on prep's lengths packs into exactly the rows prep wrote (val-ratio 0, nothing dropped)."""
    result, lengths, work = prep_section
    stats = read_manifest(work / "shards" / "prep-timed").stats
    assert stats.dropped == {}
    r = packing.run(lengths, max_lengths=(256,), repeats=1, synthetic_count=1000)[256]
    assert r["samples"] == 80 and r["padding_rows"] == 80
    assert r["concat_bfd_rows"] == stats.rows == result["prep_rows"]
    assert r["lower_bound_rows"] == stats.lower_bound_rows <= r["concat_bfd_rows"]
    # the timed plan is prep's: its rows, in its shuffled order, are the rows prep wrote
    from shards.format import ShardSet

    written = ShardSet.open(work / "shards" / "prep-timed").split("train").row_lengths()
    assert packing.plan(np.minimum(lengths, 256), 256).row_lengths().tolist() == written.tolist()
    assert r["plan_seconds"] > 0 and r["plan_packer"] == "bfd"
    found = {f["name"]: f for f in packing.figures({256: r})}
    assert found["pack_plan_seconds_10m"]["goal"] == {"op": "<", "value": 5}
    assert "1,000 lengths" in found["pack_plan_seconds_10m"]["note"]
    assert "pack_plan_seconds_10m" not in {f["name"] for f in packing.figures(packing.run(lengths, (1024,), 1, 100))}


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, records):
    work = tmp_path_factory.mktemp("shards")
    data = common.write_copies(work / "data.jsonl", records, 1)
    return {mode: common.build_shards(data, work / f"{mode}-256", mode, 256) for mode in training.MODES}


def labels_per_row(folder) -> float:
    """Supervised tokens per train row, counted row by row from the files (loss-mask ones), without shards.stats."""
    from shards.format import ShardSet

    split = ShardSet.open(folder).split("train")
    return sum(int(split.row(i).loss_mask.sum()) for i in range(split.num_rows)) / split.num_rows


def test_training_ratios_are_medians_of_paired_rounds(small_shards, monkeypatch):
    """With a clock that says every layout's step in round r took r + 1 seconds, each round's ratio is the
    ratio of supervised tokens per row (counted from the files here), and so are the median and the quartiles;
    grouped padding holds padding's rows, so its ratio to padding is 1."""
    calls = {"n": 0}

    def fake_clock(function):
        calls["n"] += 1
        return float((calls["n"] - 1) // 4 + 1), function()  # four layouts a round

    monkeypatch.setattr(training, "clock", fake_clock)
    result = training.measure(small_shards, batch_size=2, steps=3)
    assert all(result["checks"].values()), result["checks"]
    assert set(result["by_mode"]) == {"padding", "packed", "concat", "padding_grouped"} and result["model"] == "tiny"
    per_row = {mode: labels_per_row(small_shards[mode]) for mode in training.MODES}
    for mode, r in result["by_mode"].items():
        assert r["supervised_tokens_per_row"] == pytest.approx(per_row[mode.removesuffix("_grouped")])
        assert r["round_seconds"] == [1.0, 2.0, 3.0] and r["step_seconds"] == 2.0
        assert math.isfinite(r["final_loss"]) and len(r["timed_widths"]) == 3
    expected = per_row["concat"] / per_row["padding"]
    ratio = result["ratios"]["concat_over_padding"]
    assert ratio["rounds"] == pytest.approx([expected] * 3) and result["concat_over_padding"] == pytest.approx(expected)
    assert ratio["q1"] == pytest.approx(expected) == ratio["q3"]
    assert result["grouped_padding_over_padding"] == pytest.approx(1.0)
    assert result["concat_over_grouped_padding"] == pytest.approx(expected)
    grouped, padding = result["by_mode"]["padding_grouped"], result["by_mode"]["padding"]
    assert grouped["mean_epoch_width"] < padding["mean_epoch_width"]  # batches of like lengths: narrower
    names = {f["name"]: f for f in training.figures({"model": result, "toy": result})}
    assert "median of the 3 rounds' own ratios" in names["concat_over_padding"]["note"]
    assert names["concat_over_padding"]["goal"] == {"op": ">=", "value": 1.4}
    assert names["concat_over_grouped_padding"]["goal"] is None


def test_paired_ratio_of_literal_rounds():
    """Rounds 4/2, 3/1, 2/2, 9/3, 1/1: ratios 2, 3, 1, 3, 1; sorted 1, 1, 2, 3, 3: median 2, quartiles 1 and 3
    (a ratio of means would say 19/9)."""
    r = training.paired_ratio([4.0, 3.0, 2.0, 9.0, 1.0], [2.0, 1.0, 2.0, 3.0, 1.0])
    assert (r["median"], r["q1"], r["q3"]) == (2.0, 1.0, 3.0)


def test_quantile_batches_span_the_epochs_widths(small_shards):
    setup = common.Setup(small_shards["padding"], batch_size=2)
    batches, widths = training.quantile_batches(setup, 4)
    lengths = setup.split.row_lengths()
    timed = [int(lengths[rows].max()) for rows in batches]
    assert timed == sorted(timed) and len(widths) == setup.order.batches_per_epoch
    assert widths.min() <= timed[0] and timed[-1] <= widths.max()


def test_training_checks_catch_different_inputs(small_shards):
    manifests = {mode: read_manifest(path) for mode, path in small_shards.items()}
    manifests["concat"] = dataclasses.replace(manifests["concat"], source_fingerprint="another file")
    assert training.check_same_samples(manifests)["same_source"] is False


def test_tiled_shard_set_repeats_rows_and_the_probe_reads_an_epoch(small_shards, tmp_path):
    from shards.format import ShardSet

    source = small_shards["concat"]
    base = ShardSet.open(source).split("train")
    tiled = loading.tile(source, tmp_path / "tiled", min_bytes=200_000)
    split = ShardSet.open(tiled, verify=True).split("train")
    copies = split.num_rows // base.num_rows
    assert copies >= 2 and split.num_rows == copies * base.num_rows
    assert sum(e.bytes for e in ShardSet.open(tiled).manifest.split_files("train")) >= 200_000
    for r in (0, base.num_rows - 1):
        for k in ("input_ids", "loss_mask", "segment_lengths"):
            assert np.array_equal(getattr(split.row(r + (copies - 1) * base.num_rows), k), getattr(base.row(r), k))
    memory = loading.epoch_memory(source, tiled, batch_size=2, repeats=1)
    assert memory["large"]["rows"] == split.num_rows and memory["small"]["peak_anon_mib"] > 0
    assert loading.batch_seconds(source, batch_size=2, count=2, warmup=1) > 0


def test_gpu_main_runs_whole_train_commands_and_writes_its_table(tmp_path, monkeypatch, records):
    """`python -m benchmarks.gpu --only ...` end to end, as if on CUDA: each configuration one `python -m train`
    run (here a tiny CPU run; its figures mean nothing), its timed window read back, its folder removed."""
    from train.attention import AttentionError

    real = gpu.run_config
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu.common, "sample_records", lambda: records)
    monkeypatch.setattr(gpu.common, "machine", lambda: {"cuda": "none: a test"})  # it would name the device
    monkeypatch.setattr(gpu, "run_config", lambda shards, out, steps, **options: real(
        shards, out, 1, batch_size=2, model="tiny", precision="fp32", **options))
    out, work = tmp_path / "results-gpu.json", tmp_path / "w"
    outcome = CliRunner().invoke(gpu.main, ["--only", "concat_varlen_flatten", "--copies", "1", "--work", str(work),
                                            "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    runs = json.loads(out.read_text())["sections"]["gpu"]["runs"]
    assert list(runs) == ["concat_varlen_flatten"] and "| gpu | `concat_varlen_flatten_mfu` |" in outcome.output
    r = runs["concat_varlen_flatten"]
    assert set(r) == {"command_seconds", *gpu.TIMED, *gpu.PEAKS}
    assert 0 <= r["data_wait_fraction"] < 1 and math.isfinite(r["loss"]) and not (work / "run").exists()
    assert r["mfu"] is r["mfu_measured_peak"] is r["datasheet_peak_tflops"] is None  # no MFU without CUDA
    concat = {**r, "supervised_tokens_per_second": 3000.0}
    found = {f["name"]: f for f in gpu.figures({"concat_varlen": concat, "padding_varlen": {
        **r, "supervised_tokens_per_second": 2000.0}})}
    assert found["concat_over_padding_varlen"]["value"] == 1.5 and "padding_varlen_data_wait_fraction" in found
    monkeypatch.undo()
    with pytest.raises(AttentionError, match="--attention flash"):
        gpu.run_config(tmp_path, work / "run", 1, batch_size=2, model="tiny", attention="flash")


def test_gpu_fsdp_configurations_run_train_under_torchrun_on_every_gpu_in_bf16(tmp_path, monkeypatch, records):
    """`--only fsdp`: each layout one `torchrun --nproc_per_node <GPUs> -m train ... --fsdp --precision bf16`, whose
    options `python -m train` accepts, with the batch rounded up to a multiple of the GPUs."""
    from train.__main__ import main as train_main

    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(gpu.common, "sample_records", lambda: records)
    monkeypatch.setattr(gpu.common, "machine", lambda: {"cuda": "none: a test"})
    monkeypatch.setattr(gpu, "run_config", lambda shards, out, steps, **options: given.append(options) or dict.fromkeys(
        (*gpu.TIMED, *gpu.PEAKS), 1.0))
    outcome = CliRunner().invoke(gpu.main, ["--only", "fsdp", "--copies", "1", "--work", str(tmp_path / "w"),
                                            "--out", str(tmp_path / "r.json")])
    assert outcome.exit_code == 0, outcome.output
    assert given == [dict(attention="flash", compile=False, flatten=False, fsdp=3, precision="bf16")] * 3
    assert "`concat_over_padding_flash_fsdp`" in outcome.output
    command = gpu.train_command(tmp_path, tmp_path / "run", 5, batch_size=gpu.BATCH_SIZE, model=gpu.MODEL,
                                **given[0])
    at = command.index("train")
    assert command[1:at + 1] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3", "-m", "train"]
    params = train_main.make_context("train", command[at + 1:]).params  # parsed as `python -m train` parses it
    assert params["fsdp"] is True and params["precision"] == "bf16" and params["batch_size"] == 18
    assert params["max_steps"] == 10 and params["attention"] == "flash" and not params["compile"]


def test_gpu_without_cuda_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    outcome = CliRunner().invoke(gpu.main, [])
    assert outcome.exit_code == 0
    assert len(outcome.output.strip().splitlines()) == 1 and "no CUDA device" in outcome.output


def test_markdown_table_shows_each_figure_its_goal_and_verdict(tmp_path):
    figures = [report.figure("prep", "prep_over_floor", 1.05, goal=("<=", 1.1)),
               report.figure("training", "concat_over_padding", 1.1, goal=(">=", 1.4)),
               report.figure("loading", "batch_ms_256", 0.4, "ms")]
    results = {"machine": common.machine(), "versions": common.versions(), "figures": figures, "sections": {},
               "finished": "2026-01-01T00:00:00+00:00", "seconds": 1.0, "load_average": {"start": [1], "end": [1]},
               "settings": {"quick": False}, "skipped": {"trl": "not installed"}}
    text = report.markdown(results)
    assert "| prep | `prep_over_floor` | 1.05 | ≤ 1.1 | pass |" in text
    assert "| training | `concat_over_padding` | 1.1 | ≥ 1.4 | MISS |" in text
    assert "| loading | `batch_ms_256` | 0.4 ms |  |  |" in text
    assert "Not measured: trl: not installed." in text
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    outcome = CliRunner().invoke(bench_main, ["--markdown", str(path)])
    assert outcome.exit_code == 0 and outcome.output == text
    # --readme: the goals' table between the bench-headline markers, the whole one between bench-results'
    front, manual = tmp_path / "README.md", tmp_path / "benchmarks.md"
    front.write_text("top\n<!-- bench-headline:start -->\nold\n<!-- bench-headline:end -->\nend\n")
    manual.write_text("<!-- bench-results:start -->\n<!-- bench-results:end -->\n")
    outcome = CliRunner().invoke(bench_main, ["--markdown", str(path), "--readme", str(front), "--readme", str(manual)])
    assert outcome.exit_code == 0 and outcome.output == ""
    assert "`prep_over_floor`" in front.read_text() and "`batch_ms_256`" not in front.read_text()
    assert front.read_text().startswith("top\n") and "old" not in front.read_text()
    assert "`batch_ms_256`" in manual.read_text() and "Not measured" in manual.read_text()
    outcome = CliRunner().invoke(bench_main, ["--markdown", str(path), "--readme", str(path)])
    assert outcome.exit_code == 1 and "no '<!-- bench-headline:start -->'" in outcome.output


def test_settings_reject_bad_options_in_one_line():
    outcome = CliRunner().invoke(bench_main, ["--repeats", "0", "--sections", "prep,gpu"])
    assert outcome.exit_code == 1 and len(outcome.output.strip().splitlines()) == 1
    assert "--repeats: must be at least 1" in outcome.output and "--sections: unknown gpu" in outcome.output


@pytest.mark.slow
def test_quick_run_writes_results_and_the_table(tmp_path):
    """The CLI end to end on small inputs; prep and kernels have their own (heavier) tests above."""
    out, sections = tmp_path / "results.json", "packing,loading,training"
    outcome = CliRunner().invoke(bench_main, ["--quick", "--sections", sections, "--out", str(out),
                                              "--work", str(tmp_path / "w")])
    assert outcome.exit_code == 0, outcome.output
    results = json.loads(out.read_text())
    assert set(results["sections"]) == set(sections.split(",")) and set(sections.split(",")) < set(SECTIONS)
    assert {"platform", "cpus_usable", "python"} <= set(results["machine"])
    names = {f["name"] for f in results["figures"]}
    assert {"concat_rows_over_bound_256", "concat_rows_over_bound_1024", "batch_ms_256", "rss_anon_growth_mib",
            "concat_over_padding", "packed_over_padding", "concat_over_padding_tiny", "packed_over_padding_tiny"} <= names
    goals = {f["name"]: f["goal"] for f in results["figures"]}
    assert goals["concat_over_padding"] == {"op": ">=", "value": 1.4} and goals["concat_over_padding_tiny"] is None
    checks = [f for f in results["figures"] if f["name"] == "same_rows_and_tokens"]
    assert len(checks) == 1 and all(f["passed"] for f in checks)
    assert "| training | `concat_over_padding` |" in outcome.output


@pytest.mark.parametrize("module", [common, report, gpu, training, kernels, packing])
def test_docstring_examples(module):
    """`make test` collects doctests from prep/, shards/ and train/ only: run the benchmarks' here."""
    import doctest

    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_kernels_attention_op_compares_equal_outputs(small_shards):
    """varlen's output equals the dense mask's; its slot overhead is the causal pairs of its passes, counted one
    query at a time, over each stored sample's own pairs (from the shard files)."""
    from shards.format import ShardSet
    from train.attention import varlen_index

    r = kernels.attention_op(small_shards["concat"], rows=6, repeats=1)
    split = ShardSet.open(small_shards["concat"]).split("train")
    lengths = [int(n) for i in range(6) for n in split.row(i).segment_lengths]
    assert r["samples"] == len(lengths) > 3 and r["max_abs_difference"] < 1e-4
    assert {"varlen_over_dense", "varlen_over_causal", "causal_seconds"} <= set(r)
    rows = [split.row(i) for i in range(6)]
    width = max(len(row.input_ids) for row in rows)
    starts = [i * width + int(s) for i, row in enumerate(rows) for s in np.cumsum(np.r_[0, row.segment_lengths[:-1]])]
    index = varlen_index(np.array(starts), np.array(lengths), rows=6, width=width)
    computed = sum(int(g.shape[0]) * sum(q + 1 for q in range(int(g.shape[1]))) for g in (index.single_rows, *index.groups))
    ideal = sum(q + 1 for n in lengths for q in range(n))
    assert r["varlen_slot_overhead"] == pytest.approx(computed / ideal) and computed > ideal


@pytest.mark.parametrize("variant", ["dense", "lean_flatten"])
def test_kernels_step_variant_reports_time_and_memory(small_shards, variant):
    """The variant's own process: its median step and the step's peak above the model + optimizer state, which
    holds at least the fp32 weights, gradients and AdamW's two moments of every parameter."""
    from tests.test_train_flops import meta_model

    r = common.in_process(kernels.variant_step, variant=variant, shards=small_shards["concat"], model="tiny", rows=2,
                          steps=2)["result"]
    assert len(r["all_seconds"]) == 2 and min(r["all_seconds"]) <= r["seconds"] <= max(r["all_seconds"])
    parameters = sum(p.numel() for p in meta_model("tiny").parameters())
    assert r["state_mib"] > 4 * 4 * parameters / 2**20 and r["extra_mib"] > 0


def test_gpu_matrix_runs_the_whole_matrix_or_the_named_part():
    assert len(gpu.matrix()) == 3 * 4 * 2 * 2 + 3 and len({cell[0] for cell in gpu.matrix()}) == 51
    picked = gpu.matrix("varlen, sdpa")
    assert len(picked) == 3 * 2 * 2 * 2 and {cell[2] for cell in picked} == {"sdpa", "varlen"}
    assert not any(cell[5] for cell in picked)
    assert [cell[0] for cell in gpu.matrix("concat_flex_compile_flatten")] == ["concat_flex_compile_flatten"]


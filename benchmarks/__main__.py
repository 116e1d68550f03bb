"""`python -m benchmarks` (`make bench`): run the CPU benchmark, print its table, write results.json.

    python -m benchmarks --quick               # small inputs, a smoke run (benchmarks/work/results-quick.json)
    python -m benchmarks --sections packing    # some sections only
    python -m benchmarks --markdown benchmarks/results.json --readme README.md   # the table into the README
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import click

from benchmarks import common
from sftcli import check_config, click_options, flag, main_errors, opt

HERE = Path(__file__).resolve().parent
SECTIONS = ("prep", "packing", "loading", "training", "kernels")
# Defaults of the fields left None, for a full run and for --quick.
FULL = dict(out=HERE / "results.json", repeats=3, copies=52, train_steps=6, batch_size=16, records=None,
            synthetic_count=10_000_000, rss_small_mb=100, rss_large_mb=1024, model="gpt2-124m")
QUICK = dict(out=HERE / "work" / "results-quick.json", repeats=1, copies=2, train_steps=1, batch_size=2, records=120,
             synthetic_count=20_000, rss_small_mb=1, rss_large_mb=4, model="tiny")


@dataclass(frozen=True)
class Settings:
    quick: bool = opt(False, "small inputs, one repetition: a smoke run whose figures mean nothing")
    out: Path | None = opt(None, "where the results JSON goes [benchmarks/results.json; --quick: "
                                 "benchmarks/work/results-quick.json]")
    work: Path = opt(HERE / "work", "folder for generated data, shard sets and runs (git-ignored)")
    sections: str = opt(",".join(SECTIONS), "comma-separated sections to run")
    repeats: int | None = opt(None, "interleaved rounds of each slow measurement; the --model's training steps "
                                    "per layout [3; --quick 1]")
    copies: int | None = opt(None, "times the sample is repeated for prep and packing [52: 51,948 rows; --quick 2]")
    train_steps: int | None = opt(None, "timed training steps per layout of the tiny model [6; --quick 1]")
    batch_size: int | None = opt(None, "rows per batch of loading and of the tiny model's training [16; --quick 2]")
    records: int | None = opt(None, "records of the embedded sample to use [all 999; --quick 120]")
    synthetic_count: int | None = opt(None, "synthetic lengths bin-packed [10,000,000; --quick 20,000]")
    rss_small_mb: int | None = opt(None, "size of the smaller shard set of the memory comparison [100; --quick 1]")
    rss_large_mb: int | None = opt(None, "size of the larger one [1024; --quick 4]")
    model: str | None = opt(None, "the model users train, in the training and kernels sections [gpt2-124m; "
                                  "--quick tiny]; the training section also measures the tiny CPU toy")
    model_batch_size: int = opt(4, "rows per batch of the --model's training steps")
    kernel_rows: int = opt(1, "rows of 1024 tokens in the kernels section's step (the attention op takes 2)")
    trl: bool = opt(True, "time TRL's dataset preparation when trl is installed")
    max_length: int = opt(256, "max-length of the prep, loading-memory and training sections")

    def resolved(self) -> "Settings":
        """Every None filled from the full or the quick defaults; then checked (all problems at once)."""
        defaults = QUICK if self.quick else FULL
        settings = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        problems = [f"{flag(name)}: must be at least 1, got {getattr(settings, name)}"
                    for name in ("repeats", "copies", "train_steps", "batch_size", "synthetic_count", "rss_small_mb",
                                 "rss_large_mb", "model_batch_size", "kernel_rows") if getattr(settings, name) < 1]
        if settings.records is not None and not 1 <= settings.records <= 999:
            problems.append(f"--records: must be between 1 and 999, got {settings.records}")
        unknown = sorted(set(settings.section_list) - set(SECTIONS))
        if unknown:
            problems.append(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        check_config(settings, problems, "benchmark")
        return settings

    @property
    def section_list(self) -> list[str]:
        return [s.strip() for s in self.sections.split(",") if s.strip()]


def run_all(s: Settings, log=print) -> dict:
    """Run the chosen sections; return (and write to s.out) the results."""
    from benchmarks import kernels, loading, packing, prep_speed, training

    results, work, records, length = common.new_results(s), Path(s.work), common.sample_records(s.records), s.max_length
    data = work / "data"
    sample = common.write_copies(data / "sample-x1.jsonl", records, 1)
    repeated = common.write_copies(data / f"sample-x{s.copies}.jsonl", records, s.copies)
    shards = functools.cache(lambda mode, max_length: common.build_shards(  # each set made once per run
        sample, work / "shards" / f"{mode}-{max_length}", mode, max_length))
    lengths = []  # the samples' token counts, from the prep section when it runs

    def prep():
        with_trl = s.trl and bool(common.versions()["trl"])
        if not with_trl:
            results["skipped"]["trl"] = "--no-trl" if not s.trl else "trl is not installed (pip install -e '.[dev]')"
        doubled = common.write_copies(data / f"sample-x{2 * s.copies}.jsonl", records, 2 * s.copies)
        result, counts = prep_speed.measure(repeated, doubled, sample, work, length, s.repeats, with_trl)
        lengths.append(counts)
        return result, prep_speed.figures(result)

    def packing_section():
        counts = lengths[0] if lengths else prep_speed.sample_lengths(repeated)
        result = packing.run(counts, repeats=5, synthetic_count=s.synthetic_count)
        return result, packing.figures(result)

    def loading_section():
        small, large = (loading.tile(shards("concat", length), work / "shards" / f"tiled-{mb}mb", mb * 10**6)
                        for mb in (s.rss_small_mb, s.rss_large_mb))
        result = {"batch_size": s.batch_size, "memory": loading.epoch_memory(small, large, s.batch_size, s.repeats),
                  "batch_seconds": {L: loading.batch_seconds(shards("concat", L), s.batch_size)
                                    for L in packing.MAX_LENGTHS}}
        return result, loading.figures(result)

    def training_section():
        by_mode = {mode: shards(mode, length) for mode in training.MODES}
        result = {"model": training.measure(by_mode, s.model_batch_size, s.repeats, model=s.model),
                  "toy": training.measure(by_mode, s.batch_size, s.train_steps, model=training.TOY)}
        return result, training.figures(**result)

    def kernels_section():
        result = {"max_length": 1024, "attention": kernels.attention_op(shards("concat", 1024), 2, s.repeats),
                  "step": kernels.step_variants({m: shards(m, 1024) for m in ("padding", "concat")}, s.model,
                                                s.kernel_rows)}
        return result, kernels.figures(result)

    run = {"prep": prep, "packing": packing_section, "loading": loading_section, "training": training_section,
           "kernels": kernels_section}
    results["section_seconds"] = {}
    for name in (name for name in SECTIONS if name in s.section_list):
        log(f"{name} ...")
        seconds, (results["sections"][name], found) = common.clock(run[name])
        results["figures"] += found
        results["section_seconds"][name] = seconds
    return common.write_results(results, Path(s.out))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(Settings)
@click.option("--markdown", "markdown_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="print the Markdown table of an existing results JSON and exit (measures nothing)")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="with --markdown: put the table between this file's bench-results markers instead of printing it")
@main_errors()
def main(markdown_of, readme, **options) -> None:
    """Measure prep, packing, loading, training and kernels side by side; print a table, write results JSON."""
    from benchmarks import report

    if markdown_of is not None:
        table = report.markdown(json.loads(markdown_of.read_text()))
        if readme is None:
            click.echo(table, nl=False)
        else:
            from train.report import update_readme_section

            update_readme_section(readme, "bench-results", f"`python -m benchmarks --markdown {markdown_of}`:\n\n{table}")
        return
    settings = Settings(**options).resolved()
    results = run_all(settings, log=lambda line: click.echo(line, err=True))
    click.echo(report.figures_table(results["figures"]))
    if "packing" in results["sections"]:
        click.echo("\n" + report.packing_table(results["sections"]["packing"]))
    for name, reason in results["skipped"].items():
        click.echo(f"not measured: {name}: {reason}")
    click.echo(f"\n{settings.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

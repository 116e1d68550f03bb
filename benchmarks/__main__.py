"""`python -m benchmarks` (`make bench`): run the CPU benchmark, print its table, write results.json.

    python -m benchmarks --quick               # small inputs, a smoke run (benchmarks/work/results-quick.json)
    python -m benchmarks --sections packing    # some sections only
    python -m benchmarks --markdown benchmarks/results.json --readme README.md --readme docs/benchmarks.md
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import click

from benchmarks import common
from sftcli import check_config, click_options, main_errors, opt

HERE = Path(__file__).resolve().parent
SECTIONS = ("prep", "prep_scale", "prep_memory", "packing", "loading", "training", "kernels")
MAX_LENGTH = 256  # of the prep, loading-memory and training sections (kernels: 1024)


@dataclass(frozen=True)
class Scale:
    """The inputs' sizes: a full run's (the defaults) or --quick's (`QUICK`)."""

    repeats: int = 3  # interleaved rounds of each slow measurement
    model_steps: int = 8  # gpt2-124m's timed training steps per layout, one a round: ~8 s each, ±10% apart
    copies: int = 52  # the embedded sample (999 records) repeated for prep and packing: 51,948 rows
    scaling_times: int = 4  # prep's scaling on every core: the prep data this many times over (207,792 rows)
    memory_records: int = 2_000_000  # synthetic records of prep's memory run (numbered, all different)
    records: int | None = None  # records of the embedded sample used (None: all)
    toy_steps: int = 6  # timed training steps per layout of the tiny model
    batch_size: int = 16  # rows per batch of loading and of the tiny model's training
    synthetic_count: int = 10_000_000  # lengths drawn from the real ones, bin-packed at scale
    shard_mb: tuple[int, int] = (100, 1024)  # the small and the large shard set of the memory comparison
    model: str = "gpt2-124m"  # the model users train (training and kernels; training also times the tiny toy)


QUICK = Scale(repeats=1, model_steps=1, copies=2, memory_records=5_000, records=120, toy_steps=1,
              batch_size=2, synthetic_count=20_000, shard_mb=(1, 4), model="tiny")


@dataclass(frozen=True)
class Settings:
    quick: bool = opt(False, "small inputs, one repetition: a smoke run whose figures mean nothing")
    out: Path | None = opt(None, "where the results JSON goes [benchmarks/results.json; --quick: "
                                 "benchmarks/work/results-quick.json]")
    work: Path = opt(HERE / "work", "folder for generated data, shard sets and runs (git-ignored)")
    sections: str = opt(",".join(SECTIONS), "comma-separated sections to run")
    repeats: int | None = opt(None, "interleaved rounds of each slow measurement [3; --quick 1]")

    def resolved(self) -> "Settings":
        """`out` filled in for a full or a --quick run; then checked (all problems at once)."""
        problems, unknown = [], sorted(set(self.section_list) - set(SECTIONS))
        if self.repeats is not None and self.repeats < 1:
            problems.append(f"--repeats: must be at least 1, got {self.repeats}")
        if unknown:
            problems.append(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        check_config(self, problems, "benchmark")
        quick_out = HERE / "work" / "results-quick.json"
        return dataclasses.replace(self, out=self.out or (quick_out if self.quick else HERE / "results.json"))

    @property
    def section_list(self) -> list[str]:
        return [s.strip() for s in self.sections.split(",") if s.strip()]

    @property
    def scale(self) -> Scale:
        scale = QUICK if self.quick else Scale()
        return dataclasses.replace(scale, repeats=self.repeats or scale.repeats)


def run_all(s: Settings, log=print) -> dict:
    """Run the chosen sections; return (and write to s.out) the results."""
    from benchmarks import kernels, loading, packing, prep_floor, prep_scale, prep_speed, training

    scale, work = s.scale, Path(s.work)
    results, records = common.new_results(s, scale), common.sample_records(scale.records)
    data = functools.cache(lambda copies: common.write_copies(work / "data" / f"sample-x{copies}.jsonl", records,
                                                              copies))
    shards = functools.cache(lambda mode, max_length: common.build_shards(  # each set made once per run
        data(1), work / "shards" / f"{mode}-{max_length}", mode, max_length))
    with_trl = bool(common.versions()["trl"])
    if "prep" in s.section_list and not with_trl:
        results["skipped"]["trl"] = "trl is not installed (pip install -e '.[dev]')"
    llama3, why = prep_speed.llama3_args() if "prep" in s.section_list else ([], None)
    if why:
        results["skipped"]["prep_llama3_over_gpt2"] = why
    by_mode = lambda modes, max_length: {m: shards(m, max_length) for m in modes}  # noqa: E731
    run = {  # each section: (its figures from its result, the call that measures it)
        "prep": (prep_speed.figures, lambda: prep_speed.measure(
            data(scale.copies), data(2 * scale.copies), data(1), work, max_length=MAX_LENGTH, repeats=scale.repeats,
            with_trl=with_trl, llama3=llama3)),
        "prep_scale": (prep_scale.scaling_figures, lambda: prep_scale.measure_scaling(
            data(scale.scaling_times * scale.copies), data(1), work, max_length=MAX_LENGTH, repeats=scale.repeats,
            what=f"the benchmark data x{scale.scaling_times}")),
        "prep_memory": (prep_scale.memory_figures, lambda: prep_scale.measure_memory(
            records, scale.memory_records, work, max_length=MAX_LENGTH)),
        "packing": (packing.figures, lambda: packing.run(  # prep's own sample lengths
            prep_floor.sample_lengths(data(scale.copies)), synthetic_count=scale.synthetic_count)),
        "loading": (loading.figures, lambda: loading.measure(
            {L: shards("concat", L) for L in packing.MAX_LENGTHS}, work / "shards", scale.batch_size, scale.shard_mb,
            scale.repeats)),
        "training": (training.figures, lambda: {
            "model": training.measure(by_mode(training.MODES, MAX_LENGTH), 4, scale.model_steps, model=scale.model),
            "toy": training.measure(by_mode(training.MODES, MAX_LENGTH), scale.batch_size, scale.toy_steps)}),
        "kernels": (kernels.figures, lambda: kernels.measure(by_mode(("padding", "concat"), 1024), scale.model,
                                                             scale.repeats)),
    }
    for name in (name for name in SECTIONS if name in s.section_list):
        log(f"{name} ...")
        figures, measure = run[name]
        results["sections"][name] = measure()
        results["figures"] += figures(results["sections"][name])
    return common.write_results(results, Path(s.out))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(Settings)
@click.option("--markdown", "markdown_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="print the Markdown table of an existing results JSON and exit (measures nothing)")
@click.option("--readme", "readmes", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="with --markdown: put the goals' table between this file's bench-headline markers and the whole "
                   "table between its bench-results markers (either or both) instead of printing it; repeatable")
@main_errors()
def main(markdown_of, readmes, **options) -> None:
    """Measure prep, packing, loading, training and kernels side by side; print a table, write results JSON."""
    from benchmarks import report

    if markdown_of is None:
        settings = Settings(**options).resolved()
        results = run_all(settings, log=lambda line: click.echo(line, err=True))
        click.echo(report.markdown(results) + f"\n{settings.out}")
        return
    results = json.loads(markdown_of.read_text())
    if not readmes:
        click.echo(report.markdown(results), nl=False)
    for readme in readmes:
        write_tables(readme, results, markdown_of)


def write_tables(readme: Path, results: dict, source: Path) -> None:
    """The goals' table between `readme`'s bench-headline markers, the whole one between its bench-results markers."""
    from benchmarks import report
    from train.report import update_readme_section

    tables = {"bench-headline": report.headline(results), "bench-results": report.markdown(results)}
    found = [name for name in tables if f"<!-- {name}:start -->" in readme.read_text()]
    if not found:
        raise click.ClickException(f"{readme}: no '<!-- bench-headline:start -->' or '<!-- bench-results:start -->' "
                                   "markers to replace")
    for name in found:
        update_readme_section(readme, name, f"`python -m benchmarks --markdown {source}`:\n\n{tables[name]}")

if __name__ == "__main__":
    main()

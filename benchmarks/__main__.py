"""`python -m benchmarks` (`make bench`): run the CPU benchmark, print its table, write results.json.

    python -m benchmarks                       # all sections, ~10 min on 2 cores
    python -m benchmarks --quick               # small inputs, a smoke run (work/results-quick.json)
    python -m benchmarks --sections packing    # one section
    python -m benchmarks --markdown benchmarks/results.json --readme README.md   # the table into the README
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from benchmarks import common
from sftcli import check_config, click_options, flag, main_errors, opt

HERE = Path(__file__).resolve().parent
SECTIONS = ("prep", "packing", "loading", "training", "kernels")
# Defaults of the fields left None, for a full run and for --quick.
FULL = dict(out=HERE / "results.json", repeats=3, copies=52, train_steps=6, batch_size=16, records=None,
            synthetic_count=10_000_000, rss_small_mb=100, rss_large_mb=1024, kernel_model="gpt2-124m")
QUICK = dict(out=HERE / "work" / "results-quick.json", repeats=1, copies=2, train_steps=1, batch_size=2, records=120,
             synthetic_count=20_000, rss_small_mb=1, rss_large_mb=4, kernel_model="tiny")


@dataclass(frozen=True)
class Settings:
    quick: bool = opt(False, "small inputs, one repetition: a smoke run whose figures mean nothing")
    out: Path | None = opt(None, "where the results JSON goes [benchmarks/results.json; --quick: "
                                 "benchmarks/work/results-quick.json]")
    work: Path = opt(HERE / "work", "folder for generated data, shard sets and runs (git-ignored)")
    sections: str = opt(",".join(SECTIONS), "comma-separated sections to run")
    repeats: int | None = opt(None, "interleaved rounds of each slow measurement [3; --quick 1]")
    copies: int | None = opt(None, "times the sample is repeated for prep and packing [52: 51,948 rows; --quick 2]")
    train_steps: int | None = opt(None, "timed training steps per layout, at width quantiles [6; --quick 1]")
    batch_size: int | None = opt(None, "rows per batch in the loading and training sections [16; --quick 2]")
    records: int | None = opt(None, "records of the embedded sample to use [all 999; --quick 120]")
    synthetic_count: int | None = opt(None, "synthetic lengths bin-packed [10,000,000; --quick 20,000]")
    rss_small_mb: int | None = opt(None, "size of the smaller shard set of the memory comparison [100; --quick 1]")
    rss_large_mb: int | None = opt(None, "size of the larger one [1024; --quick 4]")
    kernel_model: str | None = opt(None, "model shape of the kernels section's whole step [gpt2-124m; --quick tiny]")
    kernel_rows: int = opt(1, "rows of 1024 tokens in the kernels section's step (the attention op takes 2)")
    trl: bool = opt(True, "time TRL's dataset preparation when trl is installed")
    max_length: int = opt(256, "max-length of the prep, loading-memory and training sections")

    def resolved(self) -> "Settings":
        """Every None filled from the full or the quick defaults; then checked (all problems at once)."""
        defaults = QUICK if self.quick else FULL
        settings = dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        problems = [f"{flag(name)}: must be at least 1, got {getattr(settings, name)}"
                    for name in ("repeats", "copies", "train_steps", "batch_size", "synthetic_count", "rss_small_mb",
                                 "rss_large_mb") if getattr(settings, name) < 1]
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


def run_all(settings: Settings, log=print) -> dict:
    """Run the chosen sections; return (and write to settings.out) the results."""
    from benchmarks import kernels, loading, packing, prep_speed, training

    started, clock0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    results: dict = {"started": started.isoformat(timespec="seconds"), "machine": common.machine(),
                     "versions": common.versions(), "load_average": {"start": common.load_average()},
                     "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
                     "sections": {}, "figures": [], "skipped": {}}
    sections, figures, chosen = results["sections"], results["figures"], settings.section_list
    work, records, length = Path(settings.work), common.sample_records(settings.records), settings.max_length
    data, shards = work / "data", work / "shards"
    sample = common.write_copies(data / "sample-x1.jsonl", records, 1)
    repeated = common.write_copies(data / f"sample-x{settings.copies}.jsonl", records, settings.copies)
    lengths = None

    if "prep" in chosen:
        with_trl = settings.trl and prep_speed.trl_available()
        if not with_trl:
            results["skipped"]["trl"] = "--no-trl" if not settings.trl else "trl is not installed (pip install -e '.[dev]')"
        log(f"prep: {len(records) * settings.copies:,} rows; prep, its floor{', TRL' if with_trl else ''} as processes, "
            f"{settings.repeats} rounds ...")
        doubled = common.write_copies(data / f"sample-x{2 * settings.copies}.jsonl", records, 2 * settings.copies)
        sections["prep"], lengths = prep_speed.measure(repeated, doubled, sample, work, length, settings.repeats,
                                                       with_trl)
        figures += prep_speed.figures(sections["prep"])
    if "packing" in chosen:
        lengths = prep_speed.sample_lengths(repeated) if lengths is None else lengths
        log(f"packing: {len(lengths):,} real lengths and {settings.synthetic_count:,} drawn from them ...")
        sections["packing"] = packing.run(lengths, repeats=5, synthetic_count=settings.synthetic_count)
        figures += packing.figures(sections["packing"])
    if "loading" in chosen:
        log(f"loading: batch time; memory of an epoch of {settings.rss_large_mb} MB vs {settings.rss_small_mb} MB ...")
        by_length = {L: common.build_shards(sample, shards / f"concat-{L}", "concat", L) for L in packing.MAX_LENGTHS}
        base = by_length.get(length) or common.build_shards(sample, shards / f"concat-{length}", "concat", length)
        small = loading.tile(base, shards / f"tiled-{settings.rss_small_mb}mb", settings.rss_small_mb * 10**6)
        large = loading.tile(base, shards / f"tiled-{settings.rss_large_mb}mb", settings.rss_large_mb * 10**6)
        sections["loading"] = loading.measure(by_length, small, large, settings.batch_size, settings.repeats)
        figures += loading.figures(sections["loading"])
    if "training" in chosen:
        log(f"training: padding / packed / concat at {length}, tiny model, {settings.train_steps} steps each ...")
        by_mode = {mode: common.build_shards(sample, shards / f"{mode}-{length}", mode, length)
                   for mode in training.MODES}
        sections["training"] = training.measure(by_mode, settings.batch_size, settings.train_steps)
        figures += training.figures(sections["training"])

    if "kernels" in chosen:
        log(f"kernels: attention op, varlen vs dense mask; {settings.kernel_model} step variants, a process each ...")
        by_mode = {mode: common.build_shards(sample, shards / f"{mode}-1024", mode, 1024) for mode in ("padding", "concat")}
        sections["kernels"] = {"max_length": 1024, "attention": kernels.attention_op(by_mode["concat"], 2, settings.repeats),
                               "step": kernels.step_variants(by_mode, settings.kernel_model, settings.kernel_rows)}
        figures += kernels.figures(sections["kernels"])
    finished = datetime.datetime.now(datetime.timezone.utc)
    results.update(finished=finished.isoformat(timespec="seconds"), seconds=time.perf_counter() - clock0)
    results["load_average"]["end"] = common.load_average()
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    numbers = lambda v: v.item() if isinstance(v, np.generic) else str(v)  # noqa: E731 - numpy scalars, paths
    out.write_text(json.dumps(results, indent=2, default=numbers) + "\n")
    return results


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

"""`python -m benchmarks` (`make bench`): run the CPU benchmark, print its table, write results.json.

    python -m benchmarks                       # all sections, ~10 min on 2 cores
    python -m benchmarks --quick               # small inputs, a smoke run (work/results-quick.json)
    python -m benchmarks --sections packing    # one section
    python -m benchmarks --markdown benchmarks/results.json   # print the README's Markdown table
    python -m benchmarks --markdown benchmarks/results.json --readme README.md   # ... into the README
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from benchmarks.suite import SECTIONS, Settings

_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--quick", is_flag=True, help=_HELP["quick"])
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=_HELP["out"] + " [default: benchmarks/results.json; with --quick benchmarks/work/results-quick.json]")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None, help=_HELP["work"])
@click.option("--repeats", type=int, default=None, help=_HELP["repeats"] + " [default: 3; --quick 1]")
@click.option("--copies", type=int, default=None, help=_HELP["copies"] + " [default: 52; --quick 2]")
@click.option("--train-steps", type=int, default=None, help=_HELP["train_steps"] + " [default: 5; --quick 1]")
@click.option("--sections", default=",".join(SECTIONS), show_default=True, help="comma-separated " + _HELP["sections"])
@click.option("--trl/--no-trl", default=True, show_default=True, help=_HELP["trl"])
@click.option("--markdown", "markdown_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="print the Markdown table of an existing results JSON and exit (measures nothing)")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="with --markdown: put the table between this file's bench-results markers instead of printing it")
def main(quick, out, work, repeats, copies, train_steps, sections, trl, markdown_of, readme) -> None:
    """Measure prep, packing, loading and training side by side; print a table, write results JSON."""
    from benchmarks import report
    from benchmarks.suite import run_all

    if markdown_of is not None:
        table = report.markdown(json.loads(markdown_of.read_text()))
        if readme is None:
            click.echo(table, nl=False)
        else:
            from train.report import update_readme_section

            update_readme_section(readme, "bench-results", f"`python -m benchmarks --markdown {markdown_of}`:\n\n{table}")
        return
    given = dict(out=out, work=work, repeats=repeats, copies=copies, train_steps=train_steps)
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides.update(trl=trl, sections=tuple(s.strip() for s in sections.split(",") if s.strip()))
    try:
        settings = (Settings.quick_settings(**overrides) if quick else Settings(**overrides)).validate()
    except ValueError as e:
        click.echo("error: " + " ".join(str(e).split()), err=True)
        sys.exit(1)
    results = run_all(settings, log=lambda line: click.echo(line, err=True))
    click.echo(report.table(results["figures"]))
    if "packing" in results["sections"]:
        click.echo("\n" + report.packing_rows_table(results["sections"]["packing"]))
    for name, reason in results["skipped"].items():
        click.echo(f"not measured: {name}: {reason}")
    click.echo(f"\n{settings.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

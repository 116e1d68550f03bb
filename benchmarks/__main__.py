"""`python -m benchmarks` (`make bench`): run the CPU benchmark, print its table, write results.json.

    python -m benchmarks                       # all sections, ~10 min on 2 cores
    python -m benchmarks --quick               # small inputs, a smoke run (work/results-quick.json)
    python -m benchmarks --sections packing    # one section
    python -m benchmarks --markdown benchmarks/results.json   # print the README's Markdown table
    python -m benchmarks --markdown benchmarks/results.json --readme README.md   # ... into the README
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from benchmarks.suite import Settings
from shards.cli import click_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(Settings)
@click.option("--markdown", "markdown_of", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="print the Markdown table of an existing results JSON and exit (measures nothing)")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="with --markdown: put the table between this file's bench-results markers instead of printing it")
def main(markdown_of, readme, **options) -> None:
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
    try:
        settings = Settings(**options).resolved()
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    results = run_all(settings, log=lambda line: click.echo(line, err=True))
    click.echo(report.figures_table(results["figures"]))
    if "packing" in results["sections"]:
        click.echo("\n" + report.packing_table(results["sections"]["packing"]))
    for name, reason in results["skipped"].items():
        click.echo(f"not measured: {name}: {reason}")
    click.echo(f"\n{settings.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

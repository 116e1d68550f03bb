"""python -m shards stats DIR [DIR ...] [--json] [--batch-size 16] [--group-by-length] [--plot FILE.png]
python -m shards steps DIR --supervised-tokens 150000 --batch-size 4   # prints a step count

Prints what is in one or several shard sets side by side: rows, tokens, supervised
tokens, fill, padding a collator would add, the packing lower bound, lengths.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from sftcli import main_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Inspect shard sets written by `python -m prep`."""


@main.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per shard set, one per line")
@click.option("--batch-size", default=16, show_default=True, help="batch size for pad_fraction_at_batch")
@click.option("--markdown", is_flag=True, help="print the table as Markdown")
@click.option("--group-by-length", is_flag=True,
              help="also the padding of the first epoch's batches as train draws them, shuffled and with "
                   "--group-by-length (seed 1337)")
@click.option("--plot", type=click.Path(path_type=Path), help="write sample-length and row-fill histograms to this PNG")
@main_errors()
def stats(folders, as_json, batch_size, markdown, group_by_length, plot):
    """Statistics of each shard set in FOLDERS."""
    from shards.stats import format_table, plot as draw, shard_set_stats

    all_stats = [shard_set_stats(folder, batch_size, group_by_length) for folder in folders]
    if plot:
        draw(list(folders), plot)
    if as_json:
        for s in all_stats:
            print(json.dumps(s, sort_keys=True))
    else:
        print(format_table(all_stats, markdown=markdown))
    if plot:
        click.echo(f"wrote {plot}", err=True)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--supervised-tokens", type=click.IntRange(min=1), required=True,
              help="the token budget: labels the run should train on")
@click.option("--batch-size", type=click.IntRange(min=1), required=True, help="rows per optimizer step")
@main_errors()
def steps(folder, supervised_tokens, batch_size):
    """Print the optimizer steps that train on about --supervised-tokens labels of FOLDER's train split."""
    from shards.stats import steps_for_supervised_tokens

    print(steps_for_supervised_tokens(folder, supervised_tokens, batch_size))


if __name__ == "__main__":
    main()

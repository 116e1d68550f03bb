"""python -m prep --data sample --mode concat --max-length 256 [--out DIR]

Tokenizes instruction records with a chat template, builds loss masks, lays the
samples out as padding / packed / concat rows and writes a shard set
(manifest.json + Arrow files + the tokenizer). Prints the shard statistics table.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import MISSING, fields
from typing import get_type_hints

import click

from prep.config import PrepConfig


def _options(func):
    hints = get_type_hints(PrepConfig)
    for f in reversed(fields(PrepConfig)):
        name = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = f.metadata["help"]
        if kind is bool:
            func = click.option(f"{name}/--no-{f.name.replace('_', '-')}", default=f.default, help=help_text, show_default=True)(func)
            continue
        if f.metadata.get("choices"):
            base = click.Choice(f.metadata["choices"])
        else:
            base = {int | None: int, str | None: str}.get(kind, kind)
        func = click.option(name, f.name, type=base, default=None if f.default is MISSING else f.default,
                            help=help_text, show_default=f.default is not None)(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_options
def main(**kwargs):
    """Turn instruction data into ready-to-train token shards."""
    from prep.pipeline import PrepError, run
    from prep.sources import DataError
    from prep.template import ChatFormatError
    from shards.format import ShardError
    from shards.stats import format_table, shard_set_stats

    try:
        config = PrepConfig(**kwargs).validate()
        command = "python -m prep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        run(config, command=command)
    except (ValueError, DataError, ChatFormatError, PrepError, ShardError) as e:
        raise click.ClickException(str(e)) from None
    print(format_table([shard_set_stats(config.out_dir, config.stats_batch_size)]))
    print(f"\nwrote {config.out_dir}/ (inspect with: python -m shards stats {config.out_dir})")


if __name__ == "__main__":
    main()

"""python -m prep --data sample --mode concat --max-length 256 [--out DIR]

Tokenizes instruction records with a chat template, builds loss masks, lays the
samples out as padding / packed / concat rows and writes a shard set
(manifest.json + Arrow files + the tokenizer). Prints the shard statistics table.
"""
from __future__ import annotations

import shlex
import sys

import click

from prep.config import PrepConfig
from shards.cli import click_options


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click_options(PrepConfig)
def main(**kwargs):
    """Turn instruction data into ready-to-train token shards."""
    from prep.encoders import EncoderError
    from prep.pipeline import PrepError, run
    from prep.readers import DataError
    from prep.template import ChatFormatError
    from shards.format import ShardError
    from shards.stats import format_table, shard_set_stats

    try:
        config = PrepConfig(**kwargs).validate()
        command = "python -m prep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        run(config, command=command)
    except (ValueError, DataError, ChatFormatError, EncoderError, PrepError, ShardError) as e:
        raise click.ClickException(str(e)) from None
    print(format_table([shard_set_stats(config.out_dir, config.stats_batch_size)]))
    print(f"\nwrote {config.out_dir}/ (inspect with: python -m shards stats {config.out_dir})")


if __name__ == "__main__":
    main()

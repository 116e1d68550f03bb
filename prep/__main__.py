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
from prep.packing import packer_name
from sftcli import click_options, main_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click_options(PrepConfig)
@main_errors()
def main(**kwargs):
    """Turn instruction data into ready-to-train token shards."""
    from prep.pipeline import run
    from shards.stats import format_table, shard_set_stats

    config = PrepConfig(**{**kwargs, "packer": packer_name(kwargs["packer"])}).validate()
    command = "python -m prep " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run(config, command=command)
    print(format_table([shard_set_stats(config.out_dir, config.stats_batch_size)]))
    print(f"\nwrote {config.out_dir}/ (inspect with: python -m shards stats {config.out_dir})")


if __name__ == "__main__":
    main()

"""`python -m train`: the click command. Options come from `TrainConfig`'s fields and help texts.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # tqdm bar while it trains; a problem with the options, shards or model prints
    # one line `error: ...` and exits 1 before the first step
"""
from __future__ import annotations

import sys

import click

from shards.cli import click_options
from train.config import TrainConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(TrainConfig)
def main(**options) -> None:
    """Train a causal LM on a shard set (see train/__init__.py)."""
    # Imported here: `--help` and option errors stay fast (no torch import).
    from shards.format import ShardError
    from train.config import ConfigError
    from train.loop import TrainError, train
    from train.model import ModelError

    try:
        train(TrainConfig(**options))
    except (ConfigError, ShardError, ModelError, TrainError) as e:
        click.echo("error: " + " ".join(str(e).split()), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""`python -m train`: the click command. Options come from `TrainConfig`'s fields and help texts.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # tqdm bar while it trains; a problem with the options, shards or model prints
    # one line `error: ...` and exits 1 before the first step
"""
from __future__ import annotations

import click

from sftcli import click_options, main_errors
from train.config import TrainConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(TrainConfig)
@main_errors()
def main(**options) -> None:
    """Train a causal LM on a shard set (see train/__init__.py)."""
    # Imported here: `--help` and option errors stay fast (no torch import).
    from train.loop import train

    train(TrainConfig(**options))


if __name__ == "__main__":
    main()

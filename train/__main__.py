"""`python -m train`: the click command. Options come from `TrainConfig`'s fields and help texts.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # tqdm bar while it trains; a problem with the options, shards or model prints
    # one line `error: ...` and exits 1 before the first step

Exit codes: 0 done (or stopped by SIGUSR1: requeue), 1 an error (one `error:` line), 128 + the
signal's number when SIGTERM (143) or SIGINT (130) stopped it after saving last/ (train/signals.py);
130 also for a second Ctrl-C, which stops at once (the previous last/ stays).
"""
from __future__ import annotations

import sys

import click

from sftcli import click_options, main_errors
from train.config import PARALLEL, TrainConfig, from_command_line


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(TrainConfig)
@click.option("--parallel", metavar="|".join(PARALLEL), default=None,
              help="under torchrun: ddp (the default) or fsdp (the same as --fsdp)")
@main_errors()
def main(**options) -> None:
    """Train a causal LM on a shard set (see train/__init__.py)."""
    # Imported here: `--help` and option errors stay fast (no torch import).
    from train.config import resume_command
    from train.loop import train
    from train.signals import exit_code

    config = from_command_line(options)
    try:
        summary = train(config)
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the first step): at once, wherever the run was
        click.echo(f"error: interrupted by Ctrl-C; {config.out / 'last'} holds the last complete checkpoint, "
                   f"if any: continue with: {resume_command(config)}", err=True)
        sys.exit(exit_code("SIGINT"))
    if summary["stopped"]:
        sys.exit(exit_code(summary["stopped"]))


if __name__ == "__main__":
    main()

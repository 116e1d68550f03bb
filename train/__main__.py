"""`python -m train`: the click command. Options come from `TrainConfig`'s fields and help texts.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat --max-steps 600
    # tqdm bar while it trains; a problem with the options, shards or model prints
    # one line `error: ...` and exits 1 before the first step
"""
from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import click

from train.config import TrainConfig


def click_options(cls):
    """One click option per dataclass field: its type, default and help text."""
    hints = get_type_hints(cls)

    def decorate(function):
        for field in reversed(dataclasses.fields(cls)):
            flag, hint = "--" + field.name.replace("_", "-"), hints[field.name]
            kwargs = dict(default=field.default, show_default=field.default is not None, help=field.metadata["help"])
            if get_origin(hint) in (Union, types.UnionType):  # `int | None`: optional, default None
                hint = next(arg for arg in get_args(hint) if arg is not type(None))
            if hint is bool:
                decl = [f"{flag}/--no-{flag[2:]}", field.name]
            else:
                decl = [flag, field.name]
                kwargs["type"] = (click.Choice(get_args(hint)) if get_origin(hint) is Literal
                                  else click.Path(path_type=Path) if hint is Path else hint)
            function = click.option(*decl, **kwargs)(function)
        return function

    return decorate


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

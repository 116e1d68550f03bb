"""Command-line options from a stage's typed config: one click option per dataclass field.

Shared by `python -m prep` and `python -m train` so that both turn their frozen config
dataclass (type, default, one-line help in `metadata["help"]`) into options the same way.
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import click


def click_options(cls):
    """Decorate a click command with one option per field of the dataclass `cls`.

    `bool` fields become `--x/--no-x` flags, `tuple[X, ...]` fields repeatable options, `Literal[...]` fields (or fields with
    `metadata["choices"]`) become choices, `X | None` fields are optional.
    """
    hints = get_type_hints(cls)

    def decorate(function):
        for field in reversed(dataclasses.fields(cls)):
            flag, hint = "--" + field.name.replace("_", "-"), hints[field.name]
            kwargs = dict(default=field.default, show_default=field.default is not None, help=field.metadata["help"])
            if get_origin(hint) in (Union, types.UnionType):  # `int | None`: optional, default None
                hint = next(arg for arg in get_args(hint) if arg is not type(None))
            if get_origin(hint) is tuple:  # `tuple[str, ...]`: the option may be given several times
                decl, hint = [flag, field.name], get_args(hint)[0]
                kwargs.update(multiple=True, type=hint)
            elif hint is bool:
                decl = [f"{flag}/--no-{flag[2:]}", field.name]
            else:
                decl = [flag, field.name]
                choices = field.metadata.get("choices") or (get_args(hint) if get_origin(hint) is Literal else None)
                kwargs["type"] = (click.Choice(choices) if choices
                                  else click.Path(path_type=Path) if hint is Path else hint)
            function = click.option(*decl, **kwargs)(function)
        return function

    return decorate

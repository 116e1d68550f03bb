"""The plumbing every sftpack command shares: typed config -> click options, one error path, tables.

Each stage declares one frozen dataclass whose fields are made with `opt(...)`; `click_options`
turns it into command-line options (`Literal[...]` fields become choices, `bool` fields
`--x/--no-x` flags, `tuple[X, ...]` fields repeatable options, `required=True` fields required options), `check_config` collects every
problem at once, and `main_errors` is the one path from an exception to an exit: a user error
prints one `error:` line with its fix and exits 1; anything else keeps its traceback.

    >>> flag("max_length")
    '--max-length'
    >>> print(markdown_table(["a", "b"], [[1, "x"], [2, "y"]]))
    | a | b |
    |---|---|
    | 1 | x |
    | 2 | y |
"""
from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import click


class ConfigError(ValueError):
    """Options that cannot run together; the message lists every problem at once."""


class UserError(Exception):
    """Base of every error a user can cause and fix (bad options, data, shards, models)."""


def opt(default, help: str, required: bool = False):  # noqa: A002 - `help` mirrors click's keyword
    """A config field: its default, its one-line `--help` text, whether the option is required."""
    return dataclasses.field(default=default, metadata={"help": help, "required": required})


def flag(name: str) -> str:
    """The one spelling of a field as an option."""
    return "--" + name.replace("_", "-")


def _unwrap_optional(hint):
    if get_origin(hint) in (Union, types.UnionType):  # `int | None`: optional, default None
        return next(arg for arg in get_args(hint) if arg is not type(None))
    return hint


def choices_of(cls, name: str) -> tuple:
    """The choices of a `Literal[...]` field, or () for any other field."""
    hint = _unwrap_optional(get_type_hints(cls)[name])
    return get_args(hint) if get_origin(hint) is Literal else ()


def check_config(config, problems: list[str], stage: str) -> None:
    """Add the problems every config can have (a required field unset, a value outside its
    choices) to `problems`, then raise one ConfigError listing them all, if any."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.metadata.get("required") and value is None:
            problems.insert(0, f"{flag(field.name)}: required")
        choices = choices_of(type(config), field.name)
        if choices and value not in choices and value is not None:
            problems.append(f"{flag(field.name)}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{len(problems)} {noun} with the {stage} options: " + "; ".join(problems))


def click_options(cls):
    """Decorate a click command with one option per field of the dataclass `cls`."""
    hints = get_type_hints(cls)

    def decorate(function):
        for field in reversed(dataclasses.fields(cls)):
            name, hint = flag(field.name), _unwrap_optional(hints[field.name])
            required = field.metadata.get("required", False)
            kwargs = dict(default=field.default, show_default=field.default is not None and not required,
                          help=field.metadata["help"], required=required)
            if hint is bool:
                decl = [f"{name}/--no-{name[2:]}", field.name]
            elif get_origin(hint) is tuple:  # `tuple[str, ...]`: an option given once per value
                decl = [name, field.name]
                kwargs.update(multiple=True, type=get_args(hint)[0])
            else:
                decl = [name, field.name]
                choices = choices_of(cls, field.name)
                kwargs["type"] = (click.Choice(choices) if choices
                                  else click.Path(path_type=Path) if hint is Path else hint)
            function = click.option(*decl, **kwargs)(function)
        return function

    return decorate


def command_line(program: str, config) -> str:
    """The command that reruns `config`: `program` plus every option that is set.

    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...     max_length: int = opt(256, "tokens per row")
    ...     quick: bool = opt(False, "quick run")
    ...     out: str | None = opt(None, "folder")
    >>> command_line("python -m x", C(out="a b"))
    "python -m x --max-length 256 --out 'a b'"
    """
    parts = [program]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or value is False:
            continue
        for one in value if isinstance(value, tuple) else [value]:  # repeatable options, once per value
            parts.append(flag(field.name) if one is True else f"{flag(field.name)} {shlex.quote(str(one))}")
    return " ".join(parts)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main_errors(*user_errors: type[BaseException]):
    """Decorate a command: the listed exceptions (and every UserError / ConfigError) print one
    `error: ...` line and exit 1; any other exception is a bug and keeps its traceback."""
    caught = (UserError, ConfigError, *user_errors)

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except caught as e:
                click.echo("error: " + one_line(e), err=True)
                sys.exit(1)

        return wrapper

    return decorate


def markdown_table(header: list, rows: list[list]) -> str:
    """A Markdown table; every cell through str()."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])

"""Every `python -m ...` command quoted in README.md and docs/*.md parses: its module's click command knows
every option the command gives, with a value each option accepts, so the docs cannot drift from the CLI.

Commands are parsed by click's own parser, never run: a code block's lines that start with `python -m`,
and inline code spans that do, up to a shell comment, redirection or pipe; `...` stands for elided arguments.
"""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_STOPS = {">", ">>", "|", ";", "&&", "||"}


def quoted_commands(text: str) -> list[str]:
    """The `python -m ...` commands of a Markdown text, as written."""
    found, fence = [], False
    for line in text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif fence and line.lstrip().startswith("python -m "):
            found.append(line.strip())
        elif not fence:
            found += [span for span in re.findall(r"`([^`]+)`", line) if span.startswith("python -m ")]
    return found


def arguments(command: str) -> tuple[str, list[str]]:
    """(module, its arguments) of a quoted command."""
    words = shlex.split(command, comments=True)
    stop = next((i for i, w in enumerate(words) if w in SHELL_STOPS), len(words))
    return words[2], [w for w in words[3:stop] if w != "..."]


def click_command(module: str) -> click.Command | None:
    """What `python -m module` runs: its `main` (a package's in its __main__), or None for a plain script."""
    try:
        found = importlib.import_module(f"{module}.__main__")
    except ModuleNotFoundError:
        found = importlib.import_module(module)
    main = getattr(found, "main", None)
    return main if isinstance(main, click.Command) else None


def check_parses(command: click.Command, args: list[str], name: str) -> None:
    """Raise click's usage error if `args` name an option `command` lacks, or give a choice outside its choices."""
    ctx = click.Context(command, info_name=name)  # a context without parsing: nothing is run or checked yet
    opts, rest, order = command.make_parser(ctx).parse_args(list(args))
    for param in order:
        values = opts.get(param.name)
        values = values if isinstance(values, (list, tuple)) else [values]
        if isinstance(param.type, click.Choice):
            for value in values:
                param.type.convert(value, param, ctx)
    if isinstance(command, click.Group):
        sub = command.get_command(ctx, rest[0]) if rest else None
        if sub is None:
            raise click.UsageError(f"{name}: no subcommand {rest[:1]}; it has {', '.join(command.commands)}")
        check_parses(sub, rest[1:], f"{name} {rest[0]}")


COMMANDS = sorted({(path.relative_to(ROOT).as_posix(), c) for path in DOCS for c in quoted_commands(path.read_text())})


def test_the_docs_quote_commands():
    modules = {arguments(c)[0] for _, c in COMMANDS}
    assert {"prep", "train", "shards", "train.eval", "train.report", "benchmarks"} <= modules


@pytest.mark.parametrize("page, command", COMMANDS)
def test_quoted_command_parses(page, command):
    module, args = arguments(command)
    main = click_command(module)
    if main is None:  # a plain script (tests.reliability) takes no arguments
        assert args == [], f"{page}: {command}"
        return
    try:
        check_parses(main, args, f"python -m {module}")
    except click.UsageError as e:
        pytest.fail(f"{page}: `{command}` does not parse: {e.format_message()}")


def test_a_drifted_command_is_caught():
    main = click_command("prep")
    with pytest.raises(click.UsageError):
        check_parses(main, ["--no-such-option"], "python -m prep")
    with pytest.raises(click.BadParameter):
        check_parses(main, ["--mode", "sideways"], "python -m prep")
    check_parses(main, ["--mode", "concat", "--packer", "greedy"], "python -m prep")
    with pytest.raises(click.UsageError):
        check_parses(click_command("shards"), ["nosuch"], "python -m shards")

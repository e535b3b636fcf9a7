"""The ``till-agent`` command line (Typer + Rich).

Exit codes: 0 success; 1 verification failed or an unexpected error; 2 usage error;
3 invalid input (a bad sale: nothing was consumed); 4 fiscal refusal (for example a unit
that cannot sign a Startbeleg); 5 storage problem (database damaged or locked by another
process); 6 not found.
"""

from __future__ import annotations

import inspect
import re

import typer

from agent import cli_commands as _commands  # noqa: F401 - registers the commands
from agent import cli_demo as _demo  # noqa: F401 - registers demo and bench ingest
from agent.cli_base import app
from agent.cli_config import config_app
from agent.cli_outage import outage_app
from agent.cli_print import reprint  # noqa: F401 - registers the command

__all__ = ["app", "main"]

app.add_typer(outage_app, name="outage")
app.add_typer(config_app, name="config")

_SOFT_BREAK = re.compile(r"(?<=\S)\n(?![\s*-]|\d+\.)")  # not before a list item


def unwrap_help(text: str) -> str:
    """Join the lines of each paragraph: Rich help keeps a docstring's line breaks, which
    were only made to keep the source narrow. Blank lines still separate paragraphs, and
    list items keep their lines."""
    return _SOFT_BREAK.sub(" ", inspect.cleandoc(text))


def _unwrap_commands(group: typer.Typer) -> None:
    for command in group.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = unwrap_help(command.callback.__doc__)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _unwrap_commands(sub.typer_instance)


_unwrap_commands(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

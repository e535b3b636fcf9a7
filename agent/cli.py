"""The ``till-agent`` command line (Typer + Rich).

Exit codes: 0 ok, 1 invalid DEP or unexpected error, 2 usage or configuration (also an
output that cannot be written or is no regular file, such as a device or a fifo, or a
service that cannot be reached), 3 invalid input
(nothing consumed; also a unit id or register that exists already), 4 fiscal refusal (a
register closed by its Schlussbeleg, or a receipt that must wait for the unit), 5 storage
(damaged, read-only, or another process owns the data directory), 6 not found (also a
data directory without a till database).
`config check` answers 3 for a configuration it refuses (there the configuration is the
input it checks).

(As README.md's "Command line" says them, word for word: a test compares the two.)
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

"""The ``till-agent`` command line (Typer + Rich).

Exit codes: 0 success; 1 verification failed or an unexpected error; 2 usage error;
3 invalid input (a bad sale: nothing was consumed); 4 fiscal refusal (for example a unit
that cannot sign a Startbeleg); 5 storage problem (database damaged or locked by another
process); 6 not found.
"""

from __future__ import annotations

from agent import cli_commands as _commands  # noqa: F401 - registers the commands
from agent import cli_demo as _demo  # noqa: F401 - registers demo and bench ingest
from agent.cli_base import app
from agent.cli_config import config_app
from agent.cli_outage import outage_app
from agent.cli_print import reprint  # noqa: F401 - registers the command

__all__ = ["app", "main"]

app.add_typer(outage_app, name="outage")
app.add_typer(config_app, name="config")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``till-agent`` command line (Typer + Rich).

Exit codes: 0 success; 1 verification failed or an unexpected error; 2 usage error;
3 invalid input (a bad sale: nothing was consumed); 4 fiscal refusal (for example a unit
that cannot sign a Startbeleg); 5 storage problem (database damaged or locked by another
process); 6 not found.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from agent import __version__
from agent.errors import (
    ConfigurationError,
    FiscalError,
    InvalidSale,
    NotFound,
    StorageError,
    TillAgentError,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="till-agent",
    help="Offline-first fiscal till agent (RKSV): sign, journal, export and verify receipts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
unit_app = typer.Typer(help="Signature units: create development keys, add units, list them.")
receipts_app = typer.Typer(help="Look at issued receipts.")
export_app = typer.Typer(help="Export the DEP7 journal and the crypto material container.")
simulate_app = typer.Typer(help="Replay official RKSV scenarios through the receipt service.")
bench_app = typer.Typer(help="Benchmarks (measured on this machine, against a baseline).")
app.add_typer(unit_app, name="unit")
app.add_typer(receipts_app, name="receipts")
app.add_typer(export_app, name="export")
app.add_typer(simulate_app, name="simulate")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="TILL_AGENT_DATA_DIR",
        help="Data directory holding the till database.",
        show_default=True,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_DATA = Path("till-data")

_EXIT = (
    (InvalidSale, 3),
    (FiscalError, 4),
    (StorageError, 5),
    (NotFound, 6),
    (ConfigurationError, 2),
    (TillAgentError, 1),
)


def _fail(exc: TillAgentError, as_json: bool = False) -> NoReturn:
    code = next(c for kind, c in _EXIT if isinstance(exc, kind))
    if as_json:
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, InvalidSale):
            body |= exc.as_dict()
        print(json.dumps(body, ensure_ascii=False))
    else:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(code)


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        print(f"till-agent {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point."""
    app()


from agent import cli_commands as _commands  # noqa: E402,F401 - registers the commands

if __name__ == "__main__":  # pragma: no cover
    main()

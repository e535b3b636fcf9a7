"""The shared parts of the ``till-agent`` CLI: the Typer apps, options, errors, output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent import __version__
from agent.errors import (
    ConfigurationError,
    FiscalError,
    InvalidSale,
    NotFound,
    StorageError,
    TillAgentError,
)

__all__ = ["DEFAULT_DATA", "DataDir", "JsonFlag", "app", "err", "out"]

app = typer.Typer(
    name="till-agent",
    help=(
        "Offline-first fiscal till agent (RKSV): the till service (`run`), receipts,"
        " outages, DEP export and verification."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
unit_app = typer.Typer(help="Signature units: create development keys, add units, list them.")
receipts_app = typer.Typer(help="Look at issued receipts.")
export_app = typer.Typer(help="Export the DEP7 journal and the crypto material container.")
simulate_app = typer.Typer(
    help="Replay official RKSV scenarios; switch development units down and up at run time."
)
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
        help="Data directory holding the till database (default: the one `run` uses).",
        show_default=True,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _default_data() -> Path:
    """The data directory `till-agent run` uses: from the configuration (file and
    environment) if it loads, else the built-in default (see agent.config)."""
    from agent.config import default_data_dir, load_config

    try:
        return load_config().data_dir
    except TillAgentError:
        return default_data_dir()


DEFAULT_DATA = _default_data()

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
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
    raise typer.Exit(code)


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))


def _print_metrics(data: dict[str, Any], as_json: bool) -> None:
    """A benchmark's figures: one JSON object on one line, or a metric/value table."""
    if as_json:
        print(json.dumps(data))
        return
    table = Table("metric", "value")
    for key, value in data.items():
        table.add_row(key, str(value))
    out.print(table)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        print(f"till-agent {__version__}")
        raise typer.Exit(0)

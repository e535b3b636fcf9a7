"""The shared parts of the ``till-agent`` CLI: the Typer apps, options, errors, output."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import Progress
from rich.table import Table

from agent import __version__
from agent.errors import (
    BackupFailed,
    ConfigurationError,
    DataDirLocked,
    FiscalError,
    InvalidSale,
    NoDatabase,
    NotFound,
    RegisterClosed,
    RegisterRefused,
    StorageError,
    TillAgentError,
)

if TYPE_CHECKING:
    import httpx

    from agent.config import AgentConfig
    from storage.writer import WriteConnection

__all__ = [
    "DEFAULT_DATA",
    "SQLITE_MAX",
    "DataDir",
    "JsonFlag",
    "OutageId",
    "ReceiptNumber",
    "app",
    "err",
    "out",
]

app = typer.Typer(
    name="till-agent",
    help=(
        "Offline-first fiscal till agent (RKSV): the till service (`run`), receipts,"
        " outages, DEP export and verification, quarterly DEP backups, Belegchecks."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
unit_app = typer.Typer(
    help="Signature units: create development keys, add units, list them, switch a register"
    " to another one."
)
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


def _bare_flags() -> None:
    """Show flags bare in the help (``--json``, not ``--json <bool>``).

    typer 0.29 prints the type of every option in the Rich help, a flag's too (even
    ``--help <bool>``), as if it took a value; up to 0.28 it left flags bare, and so does
    its plain-text help still. Typer makes the options itself (the help option too), so
    the one place to say it is the option class.
    """
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # typer < 0.29
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_bare_flags()


class _WholeLines(Console):
    """Into a pipe or a file a line of text is printed whole, as ``print`` would print it
    (Rich wraps text at the width of a terminal, and without one at 80 columns)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not self.is_terminal and all(isinstance(o, str) for o in objects):
            kwargs.setdefault("soft_wrap", True)
        super().print(*objects, **kwargs)


out = _WholeLines()
err = _WholeLines(stderr=True)


def _data_dir(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    """The default is the data directory of `run`'s configuration: if that configuration
    does not load, the default would be a guess, and a guess may be another till's data."""
    source = ctx.get_parameter_source(param.name or "")
    from_default = source is not None and source.name == "DEFAULT"  # typer vendors click
    if from_default and _CONFIG_PROBLEM is not None:
        raise typer.BadParameter(
            f"the configuration does not load, so its data directory is unknown: "
            f"{_CONFIG_PROBLEM} (see `till-agent config check`); or pass --data-dir"
        )
    return value


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="TILL_AGENT_DATA_DIR",
        help="Data directory holding the till database (default: the one `run` uses).",
        show_default=True,
        callback=_data_dir,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

# the largest INTEGER SQLite holds: a number beyond it names nothing, and binding it to a
# query raises OverflowError, so it is a usage error
SQLITE_MAX = 2**63 - 1
ReceiptNumber = Annotated[int, typer.Argument(help="Receipt number.", min=1, max=SQLITE_MAX)]
OutageId = Annotated[
    int, typer.Argument(help="Outage id (see `outage list`).", min=1, max=SQLITE_MAX)
]


def _run_config() -> AgentConfig:
    """The configuration `run` uses: the file TILL_AGENT_CONFIG names (`run --config`
    takes it from there too), else the system file if it exists, and the environment.

    Raises:
        ConfigurationError: it does not load.
    """
    from agent.config import CONFIG_ENV, load_config

    named = os.environ.get(CONFIG_ENV)
    return load_config(Path(named) if named else None)


def _default_data() -> Path:
    """The data directory `till-agent run` uses: from the configuration (file and
    environment) if it loads, else the built-in default (see agent.config)."""
    from agent.config import default_data_dir

    global _CONFIG_PROBLEM  # noqa: PLW0603 - found once, when the CLI is loaded
    try:
        return _run_config().data_dir
    except TillAgentError as exc:
        _CONFIG_PROBLEM = str(exc)
        try:
            return default_data_dir()
        except ConfigurationError:  # no default at all: only shown, _data_dir refuses it
            return Path("till-data")


_CONFIG_PROBLEM: str | None = None


DEFAULT_DATA = _default_data()

_EXIT = (
    (NoDatabase, 6),  # not found, though a StorageError for the code that opens it
    (RegisterClosed, 4),
    (RegisterRefused, 4),  # a refusal by the register's state, though nothing was consumed
    (InvalidSale, 3),
    (FiscalError, 4),
    (BackupFailed, 2),  # an output that cannot be written
    (StorageError, 5),
    (NotFound, 6),
    (ConfigurationError, 2),
    (TillAgentError, 1),
)


def _exit_code(exc: TillAgentError) -> int:
    return next(c for kind, c in _EXIT if isinstance(exc, kind))


def _fail(
    exc: TillAgentError, as_json: bool = False, *, extra: dict[str, Any] | None = None
) -> NoReturn:
    """Report ``exc`` and exit with its code; ``extra``: more fields of the --json body."""
    code = _exit_code(exc)
    if as_json:
        body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, InvalidSale):
            body |= exc.as_dict()
        body |= extra or {}
        print(json.dumps(body, ensure_ascii=False))
    else:
        err.print(f"[red]error:[/red] {escape(_said(exc))}", highlight=False)
    raise typer.Exit(code)


def _said(exc: TillAgentError) -> str:
    """``exc`` as a line: an invalid input whose message names its field first ("--key-id
    must be ...") is not prefixed with the field again ("--key-id: --key-id must be")."""
    if isinstance(exc, InvalidSale) and exc.message.startswith(f"{exc.field} "):
        return f"{exc.message} [{exc.rule}]"
    return str(exc)


def _ask_service(
    config: AgentConfig, path: str, body: Any, as_json: bool, *, pointer: str
) -> httpx.Response:
    """POST to the running service's local API; a service that cannot be reached is a
    clean error (exit 2) naming the address tried and ``pointer``, the way to name the
    service's configuration to this command."""
    import httpx

    from agent.local_api import address_file, base_url, post_to_service

    api = config.api
    if api.unix_socket:
        address = str(api.unix_socket)
    elif api.port == 0:  # the port the OS picked, in the file the service wrote
        address = f"(api.port = 0: named in {address_file(config)})"
    else:
        address = base_url(api.host, api.port)
    where = (
        f"{pointer} naming the service's configuration, or TILL_AGENT_API__HOST and"
        " TILL_AGENT_API__PORT (TILL_AGENT_API__UNIX_SOCKET)"
    )
    try:
        return post_to_service(config, path, body)
    except httpx.RequestError as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = (
            f"another process (the till service?) holds the data directory and its local"
            f" API at {address} did not answer ({reason}); point this command at the"
            f" service with {where}"
        )
    except OSError as exc:
        message = f"cannot read the local API token {api.token_file}: {exc.strerror or exc}"
    except DataDirLocked as exc:  # the service runs without its API: nobody to ask
        message = (
            f"{exc}: this command cannot reach it; enable [api] in the service's"
            " configuration, or run the command while the service is stopped"
        )
    _fail(ConfigurationError(message), as_json)


def _record_evidence(
    data_dir: Path,
    as_json: bool,
    record: Callable[[WriteConnection], Any],
    api: tuple[str, dict[str, Any]],
) -> Any:
    """Record what the operator did (a FinanzOnline or Belegcheck reference) in the till
    database with ``record``; while the service holds the data directory, POST it to the
    service's local API instead (``api``: the path under /v1 and the body). Returns what
    ``record`` or the API answered; an error, the core's or the one the service answered
    with, is the command's exit."""
    from storage.db import open_till_db

    try:
        db = open_till_db(data_dir, create=False)  # a mistyped directory stays as it is
    except DataDirLocked:  # the service holds the data directory: ask it over its API
        return _record_via_service(data_dir, *api, as_json)
    except TillAgentError as exc:
        _fail(exc, as_json)
    try:
        return record(db.write_connection())
    except TillAgentError as exc:
        _fail(exc, as_json)
    finally:
        db.close()


def _record_via_service(data_dir: Path, path: str, body: dict[str, Any], as_json: bool) -> Any:
    """POST to the service the configuration names, only if it is the service of
    ``data_dir``: another till's service would record it in its own journal."""
    from agent.config import CONFIG_ENV

    try:
        config = _run_config()
    except TillAgentError as exc:
        _fail(exc, as_json)
    if config.data_dir.resolve() != data_dir.resolve():
        message = (
            f"another process (the till service?) holds the data directory {data_dir}, but"
            f" the configuration found ({CONFIG_ENV}, else the system file) is that of"
            f" {config.data_dir}: point {CONFIG_ENV} at the configuration of the service of"
            f" {data_dir}"
        )
        _fail(ConfigurationError(message), as_json)
    response = _ask_service(config, path, body, as_json, pointer=CONFIG_ENV)
    if response.status_code >= 400:
        _fail(_service_error(response), as_json)
    return response.json()


def _service_error(response: httpx.Response) -> TillAgentError:
    """The error a refusal of the service's API stands for: its {field, rule, message} as
    this command's own (404 not found, exit 6, in the core's words; 409 and 422 bad input,
    exit 3; rule storage, exit 5); anything else, such as a 500 or uvicorn's plain-text
    503 beyond its connections, names the status (exit 1) instead of failing to read it
    as JSON."""
    status = response.status_code
    try:
        error = response.json()
        field, rule, message = error["field"], error["rule"], error["message"]
    except (ValueError, KeyError, TypeError):
        return TillAgentError(f"the service answered HTTP {status}: {response.text[:200]!r}")
    if rule == "storage":
        return StorageError(message)
    if status == 404:
        return NotFound(message)
    if status in (409, 422):
        return InvalidSale(field, rule, message)
    return TillAgentError(f"the service answered HTTP {status}: {field}: {message} [{rule}]")


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
    _print_table(table)


_UNBOUNDED = 1 << 20  # columns: as wide as a table needs


def _print_table(table: Table) -> None:
    """A table on stdout. Into a pipe or a file it is as wide as its rows, so scripts and
    logs get every value whole; a terminal gets it fitted to its width."""
    if out.is_terminal:
        out.print(table)
        return
    table.width = Measurement.get(out, out.options.update_width(_UNBOUNDED), table).maximum
    out.print(table, crop=False)


def _progress(as_json: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal: not with --json, and not into a
    pipe or a file, where it could not be erased and would leave a blank line."""
    return Progress(console=err, transient=True, disable=as_json or not err.is_terminal)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        print(f"till-agent {__version__}")
        raise typer.Exit(0)

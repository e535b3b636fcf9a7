"""``till-agent backup list`` and ``backup run``: the quarterly DEP backups (§ 7 Abs 3 RKSV)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli_base import DEFAULT_DATA, DataDir, JsonFlag, _emit, _fail, _print_table, err, out
from agent.cli_commands import _database, _reader, _require_register
from agent.cli_config import ConfigOption
from agent.errors import BackupFailed, ConfigurationError, InvalidSale

if TYPE_CHECKING:
    from agent.backup import BackupRecord, Quarter

__all__ = ["backup_app"]

backup_app = typer.Typer(
    help="Quarterly DEP backups (§ 7 Abs 3 RKSV): list them, or write the due ones now."
)

RegisterOption = Annotated[str | None, typer.Option("--register", help="Only this Kassen-ID.")]


@backup_app.command("list")
def backup_list(
    register: RegisterOption = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """The recorded backups by register and quarter: file, SHA-256, receipts, when written."""
    from agent.backup import list_backups

    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        if register is not None:
            _require_register(conn, register, as_json)
        records = list_backups(conn, register)
    _show(records, as_json)


@backup_app.command("run")
def backup_run(
    register: RegisterOption = None,
    quarter: Annotated[
        str | None,
        typer.Option(
            "--quarter",
            metavar="YYYY-Qn",
            help="Only this quarter (e.g. 2026-Q3); it must have ended, in the register's"
            " time zone, five minutes ago, and not be before the register's first"
            " receipt. Needs --register when the till has several registers.",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Write the due backups now (every ended quarter without one, oldest first), or one
    quarter's. The data directory and \\[backup] dir come from the configuration; the data
    directory must not be in use by `till-agent run` (which writes them by itself)."""
    from agent.backup import DepBackups
    from agent.clock import SystemClock
    from agent.config import load_config

    wanted = _quarter(quarter, as_json)
    try:
        loaded = load_config(config)
    except ConfigurationError as exc:
        _fail(exc, as_json)
    assert loaded.backup.dir is not None
    if warning := loaded.backup.same_disk_warning(loaded.data_dir):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    with _database(loaded.data_dir, as_json, create=False) as db:
        with db.read_connection() as conn:
            registers = [str(r[0]) for r in conn.execute("SELECT id FROM registers ORDER BY id")]
            if register is not None:
                _require_register(conn, register, as_json)
        backups = DepBackups(db, loaded.backup.dir, SystemClock(), data_dir=loaded.data_dir)
        if wanted is None:
            run = backups.attempt_due(register)
            if run.failures:
                _failed_after(run.written, run.failures[0], as_json)
            _show(run.written, as_json, empty="no backup is due")
            return
        try:
            record, new = backups.run_quarter(_one(register, registers, as_json), wanted)
        except InvalidSale as exc:
            _fail(_as_option(exc), as_json)
    if not new and not as_json:
        out.print(f"{record.register} {record.quarter} was backed up already:", highlight=False)
    _show([record], as_json)


def _quarter(text: str | None, as_json: bool) -> Quarter | None:
    from agent.backup import Quarter

    if text is None:
        return None
    try:
        return Quarter.parse(text)
    except ValueError as exc:
        _fail(InvalidSale("--quarter", "quarter-form", str(exc)), as_json)


def _as_option(exc: InvalidSale) -> InvalidSale:
    """The backup module names the field ``quarter``; here it is the option ``--quarter``."""
    if exc.field != "quarter":
        return exc
    return InvalidSale("--quarter", exc.rule, exc.message)


def _one(register: str | None, registers: list[str], as_json: bool) -> str:
    """--quarter names one register's quarter: --register, or the till's only register."""
    if register is not None:
        return register
    if len(registers) != 1:
        _fail(
            InvalidSale(
                "--register",
                "register-needed",
                f"the till has {len(registers)} registers ({', '.join(registers) or 'none'}):"
                " name one with --register",
            ),
            as_json,
        )
    return registers[0]


def _failed_after(written: list[BackupRecord], exc: BackupFailed, as_json: bool) -> NoReturn:
    """A failure ends the run's output, after the backups written for the other registers
    (with --json in the error object, as ``written``): they exist and are recorded."""
    if as_json:
        _fail(exc, True, extra={"written": [asdict(r) for r in written]})
    if written:
        out.print("written before the failure:")
        _show(written, as_json)
    _fail(exc)


def _show(records: list[BackupRecord], as_json: bool, *, empty: str = "no backups") -> None:
    if as_json:
        _emit([asdict(r) for r in records], True)
        return
    if not records:
        out.print(empty)
        return
    table = Table("register", "quarter", "receipts", "last", "written (UTC)", "sha256", "file")
    for r in records:
        table.add_row(
            r.register,
            r.quarter,
            str(r.receipts),
            str(r.last_number),
            r.written_at[:19],
            r.sha256,
            r.path,
        )
    _print_table(table)

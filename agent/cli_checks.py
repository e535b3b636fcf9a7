"""``till-agent checks ...``: the Belegcheck the operator owes after a Startbeleg or a
Jahresbeleg (rksv.md section 6), the FinanzOnline report of the decommissioning after a
Schlussbeleg (section 5), and the FinanzOnline steps of a unit a register switched to
(``unit switch``), listed and recorded."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from agent.checks import CheckKind
from agent.cli_base import (
    DEFAULT_DATA,
    DataDir,
    JsonFlag,
    _emit,
    _print_table,
    _record_evidence,
    out,
)
from agent.cli_commands import _reader, _require_register

__all__ = ["checks_app"]

checks_app = typer.Typer(
    help="Checks the operator owes (Startbeleg, Jahresbeleg), the decommissioning report"
    " (Schlussbeleg) and the registration of a unit a register switched to (unit switch):"
    " list them, record them."
)


@checks_app.command("list")
def checks_list(
    register: Annotated[str | None, typer.Option(help="Only this Kassen-ID.")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also the checks recorded as done.")
    ] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """The open checks and the failed ones, by due date: register, kind, year, receipt,
    due date, open/overdue/FAILED, reference.

    With --json each check has the fields of `open_checks` in the local API's
    GET /v1/status.
    """
    from agent.check_view import check_out
    from agent.checks import load_checks
    from agent.clock import SystemClock

    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        records = load_checks(conn, register, done=show_all, failed=True)
        if register is not None and not records:
            _require_register(conn, register, as_json)
    now = SystemClock().now()  # one moment for every row's overdue
    checks = [check_out(r, now) for r in records]
    if as_json:
        _emit([c.model_dump(mode="json", by_alias=True) for c in checks], True)
        return
    table = Table("register", "check", "year", "receipt", "due", "state", "reference")
    for c in checks:
        state = "overdue" if c.overdue else "open"
        if c.reference is not None:
            state = "FAILED" if c.failed else "done"
        table.add_row(
            c.register_id, c.kind, str(c.year), str(c.number), str(c.due), state, c.reference or "-"
        )
    _print_table(table)


@checks_app.command("done")
def checks_done(  # noqa: PLR0917 - a Typer command: its options are its parameters
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    kind: Annotated[
        CheckKind,
        typer.Argument(
            help="Which check: the Startbeleg's, a Jahresbeleg's, closing: the"
            " FinanzOnline report of the decommissioning after the Schlussbeleg, or unit:"
            " the FinanzOnline registration of the unit a register switched to."
        ),
    ],
    reference: Annotated[
        str, typer.Option(help="Reference of the Belegcheck (or of the FinanzOnline entry).")
    ],
    year: Annotated[
        int | None,
        typer.Option(
            help="Year of the checked receipt (needed for yearly; start and closing: the"
            " register's one by default; unit: its latest switch by default).",
            min=1,
            max=9999,
        ),
    ] = None,
    receipt: Annotated[
        int | None,
        typer.Option(
            help="Receipt number of the check (`checks list`): for unit, the first receipt"
            " after the switch, which names one of several switches.",
            min=1,
            max=2**63 - 1,  # SQLite INTEGER
        ),
    ] = None,
    failed: Annotated[
        bool,
        typer.Option("--failed", help='The check failed ("unit failed").'),
    ] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Record that the Startbeleg or the Jahresbeleg of a year was checked with the BMF
    Belegcheck app or web service (or, closing, that the decommissioning was reported in
    FinanzOnline; unit, that the unit a register switched to was registered there and a
    receipt it signed checked), once; its reminders stop.

    Several unit checks may be open (one per switch): --receipt names one, else the
    latest switch's is recorded (a receipt number may have a recorded one and an open one:
    a switch away from the unit the recorded one registered; a new reference records the
    open one). Another reference for a check that passed is refused
    (exit 3), the same one again changes nothing (it finds the check it was recorded
    for). --failed records a check that failed: an ERROR alert says the register counts
    as "unit failed"; the check made again once the cause is fixed is recorded with its
    new --reference (a closing report does not fail: exit 3).
    """
    from agent.check_view import check_out
    from agent.checks import record_check
    from agent.clock import SystemClock

    clock = SystemClock()
    body = {"year": year, "number": receipt, "reference": reference, "failed": failed}
    check = _record_evidence(
        data_dir,
        as_json,
        lambda writer: check_out(
            record_check(
                writer, clock, register, kind, year, reference, failed=failed, number=receipt
            ),
            clock.now(),
        ).model_dump(mode="json", by_alias=True),
        (f"registers/{register}/checks/{kind}", body),
    )
    _emit(check, as_json)
    if not as_json:
        result = "FAILED" if failed else "done"
        what = "report" if kind == "closing" else "check"
        # a unit check is one of a year's switches: named by its first receipt
        which = f"(receipts from {check['number']} on)" if kind == "unit" else check["year"]
        out.print(f"{register}: {kind} {what} {which} {result}, reference {reference!r} recorded")

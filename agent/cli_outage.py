"""``till-agent outage ...`` (the evidence pack) and ``till-agent simulate unit ...``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from agent.cli_base import (
    DEFAULT_DATA,
    DataDir,
    JsonFlag,
    OutageId,
    _emit,
    _fail,
    _print_table,
    _record_evidence,
    out,
    simulate_app,
)
from agent.cli_commands import (
    _fail_to_write,
    _reader,
    _refuse_output,
    _require_register,
    _service,
)
from agent.errors import (
    FiscalError,
    InvalidSale,
    TillAgentError,
)

__all__ = ["outage_app"]

outage_app = typer.Typer(
    help="Outages of signature units: list, evidence pack, FinanzOnline report."
)


@outage_app.command("list")
def outage_list(
    register: Annotated[str | None, typer.Option(help="Only this Kassen-ID.")] = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """All outages, newest first: state, age, affected receipts, escalation, the report and
    the end report (past 48 h: the reference, or the due date while none is recorded).

    With --json each outage has the fields of the local API's GET /v1/outages (same names,
    UTC times ending in Z), then probe_attempts, age_seconds (an open outage's: so far,
    until now) and checked_at (the service's last check of it).
    """
    from agent.clock import SystemClock
    from agent.evidence import outage_json
    from agent.outage_view import as_of
    from agent.outages import load_outages

    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        stored = load_outages(conn, register)
        if register is not None and not stored:
            _require_register(conn, register, as_json)
        zones = {str(r[0]): str(r[1]) for r in conn.execute("SELECT id, timezone FROM registers")}
    now = SystemClock().now()
    records = [as_of(r, now) for r in stored]
    if as_json:
        _emit([outage_json(r) for r in records], True)
        return
    table = Table(
        "id",
        "register",
        "started (UTC)",
        "ended",
        "hours",
        "affected",
        "level",
        "report",
        "end report",
    )
    for r in records:
        zone = zones[r.register_id]
        table.add_row(
            str(r.id),
            r.register_id,
            r.started_at[:19],
            (r.ended_at or "open")[:19],
            f"{r.age_seconds / 3600:.1f}" + (" so far" if r.ended_at is None else ""),
            str(r.affected),
            r.escalations[-1] if r.escalations else "-",
            _report(r.report_reference, r.report_due, zone),
            _report(r.end_report_reference, r.end_report_due, zone),
        )
    _print_table(table)


def _report(reference: str | None, due: str | None, timezone: str) -> str:
    """A report as the list shows it: its reference, else the moment it is due (in the
    register's time zone: it is overdue from then on), else -."""
    from agent.outage_watch import shown_due

    return reference or ("due " + shown_due(due, timezone) if due else "-")


def _pack(data_dir: Path, outage_id: int, as_json: bool) -> dict[str, object]:
    """The evidence pack of ``outage_id``; an open outage's age in it is its age so far."""
    from agent.clock import SystemClock
    from agent.evidence import outage_evidence, outage_json
    from agent.outage_view import as_of
    from agent.outages import load_outage

    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        pack = outage_evidence(conn, outage_id)  # NotFound: no such outage
        record = load_outage(conn, outage_id)
    if record is not None and record.ended_at is None:  # the pack has the stored age
        record = as_of(record, SystemClock().now())
        pack["outage"] = outage_json(record)
        pack["duration_hours"] = round(record.age_seconds / 3600, 2)
    return pack


@outage_app.command("show")
def outage_show(
    outage_id: OutageId,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """One outage with its affected receipts, Sammelbeleg, escalations and reports."""
    from agent.evidence import render_evidence

    pack = _pack(data_dir, outage_id, as_json)
    if as_json:
        _emit(pack, True)
    else:
        print(render_evidence(pack), end="")


@outage_app.command("export")
def outage_export(
    outage_id: OutageId,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Directory for outage-ID.json and .txt.")
    ] = Path(),
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Write the evidence pack as JSON and as readable text (for the tax advisor)."""
    from agent.durable import replace_file
    from agent.evidence import render_evidence

    json_file = output / f"outage-{outage_id}.json"
    text_file = output / f"outage-{outage_id}.txt"
    # the till's own files, a read-only file, a device or a fifo: refused before we write
    for path in (json_file, text_file):
        _refuse_output(path, "--output", data_dir, as_json)
    pack = _pack(data_dir, outage_id, as_json)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail_to_write(output, exc, as_json)
    text = json.dumps(pack, ensure_ascii=False, indent=2) + "\n"
    for path, data in ((json_file, text), (text_file, render_evidence(pack))):
        try:
            replace_file(path, data.encode("utf-8"))
        except OSError as exc:
            _fail_to_write(path, exc, as_json)
    if as_json:
        _emit({"json": str(json_file), "text": str(text_file)}, True)
    else:
        out.print(f"evidence pack: {json_file}, {text_file}")


@outage_app.command("report")
def outage_report(
    outage_id: OutageId,
    reference: Annotated[str, typer.Option(help="FinanzOnline reference of the report.")],
    end: Annotated[bool, typer.Option("--end", help="This is the end-of-outage report.")] = False,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Record that the outage report (or with --end the end report) was made in FinanzOnline.

    An outage past 48 h owes both: the report within a week of the 48 hours, the end report
    within a week of its Sammelbeleg. The reminders of a report stop once it is recorded.
    An outage a Schlussbeleg with the failure marker ended (special closing --failed-ok)
    owes no end report: --end is refused (exit 3), the decommissioning report
    (checks done KASSE closing) takes its place.
    """
    from agent.clock import SystemClock
    from agent.outage_watch import acknowledge_report

    _record_evidence(
        data_dir,
        as_json,
        lambda writer: acknowledge_report(writer, SystemClock(), outage_id, reference, end=end),
        (f"outages/{outage_id}/report", {"reference": reference, "end": end}),
    )
    _emit({"outage": outage_id, "reference": reference, "end": end}, as_json)
    if not as_json:
        out.print(f"outage {outage_id}: {'end ' if end else ''}report {reference!r} recorded")


@outage_app.command("recover")
def outage_recover(
    register: Annotated[str, typer.Argument(help="Kassen-ID.")],
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Probe the register's unit now; if it answers, issue what waited for it.

    That is the Sammelbeleg, remedies of unsigned receipts and waiting special receipts.
    `till-agent run` does this by itself.
    """
    with _service(data_dir, as_json) as service:
        unit = service.unit_of(register)  # NotFound: no such register (exit 6)
        try:
            unit.probe(deadline=time.monotonic() + service.sign_timeout)
        except (TillAgentError, OSError) as exc:
            service.record_probe(register, False, str(exc))
            _fail(FiscalError(f"the unit of {register} does not answer: {exc}"), as_json)
        service.record_probe(register, True, "unit answered (outage recover)")
        issued = service.recover(register)
    if issued is None:
        _fail(FiscalError(f"the unit of {register} answered but could not sign"), as_json)
    data = [{"number": r.number, "kind": r.kind, "state": r.signature_state} for r in issued]
    _emit({"register": register, "issued": data}, as_json)
    if not as_json:
        out.print(
            ", ".join(f"{r.kind} {r.number}" for r in issued) or "nothing was waiting for the unit"
        )


UnitMode = Literal["up", "down", "slow", "late", "garbage", "flap"]


@simulate_app.command("unit")
def simulate_unit(
    mode: Annotated[UnitMode, typer.Argument(help="up | down | slow | late | garbage | flap")],
    unit: Annotated[
        str | None, typer.Option(help="Unit id (default: every simulated unit).")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA,
    as_json: JsonFlag = False,
) -> None:
    """Switch a development unit at run time, also while `till-agent run` is running.

    Only units created with simulate = true (the development unit) listen to this.
    """
    from agent.signing.flaky import write_mode

    with _reader(data_dir, as_json) as db, db.read_connection() as conn:
        rows = conn.execute("SELECT id, config FROM units ORDER BY id").fetchall()
    simulated = [r["id"] for r in rows if json.loads(r["config"]).get("simulate")]
    targets = simulated if unit is None else [unit]
    if not targets or any(t not in simulated for t in targets):
        _fail(
            InvalidSale(
                "--unit",
                "simulated-unit",
                "only development units with simulate = true can be switched"
                f" (simulated here: {', '.join(simulated) or 'none'})",
            ),
            as_json,
        )
    for target in targets:
        write_mode(data_dir / "simulate" / f"{target}.mode", mode)
    _emit({"units": targets, "mode": mode}, as_json)
    if not as_json:
        out.print(f"{', '.join(targets)}: {mode}")

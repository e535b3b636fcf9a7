"""The evidence pack of one outage: what a tax advisor asks for afterwards.

Start, end, cause, the receipts it affected, the Sammelbeleg (none when the register was
decommissioned inside the outage: its Schlussbeleg is the last affected receipt), the
escalations sent, probe attempts, clock jumps seen while it was open, and the FinanzOnline
report references, as JSON (for tools) and as readable text (for people).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from pydantic import TypeAdapter

from agent.errors import NotFound
from agent.outage_view import outage_out
from agent.outages import OutageRecord, load_outage

__all__ = ["outage_evidence", "outage_json", "render_evidence"]

_AFFECTED = (
    "SELECT number, receipt_id, kind, signature_state, issued_at, amount_normal"
    " + amount_reduced1 + amount_reduced2 + amount_zero + amount_special AS total_cents"
    " FROM receipts WHERE register_id = ? AND number BETWEEN ? AND ?"
    " AND signature_state != 'signed' ORDER BY number"
)


_STAMP = TypeAdapter(dt.datetime)  # a time as the API writes it (UTC: ``Z``)


def outage_json(record: OutageRecord) -> dict[str, Any]:
    """One outage as ``GET /v1/outages`` has it (its names, UTC times ending in ``Z``),
    and after that what only the command line shows: probe attempts, age, last check."""
    data: dict[str, Any] = outage_out(record).model_dump(mode="json")
    data |= {
        "probe_attempts": record.probe_attempts,
        "age_seconds": record.age_seconds,
        "checked_at": _STAMP.dump_python(dt.datetime.fromisoformat(record.checked_at), mode="json"),
    }
    return data


def outage_evidence(conn: sqlite3.Connection, outage_id: int) -> dict[str, Any]:
    """Everything recorded about outage ``outage_id`` (``conn`` gives ``sqlite3.Row``s,
    as ``TillDB.read_connection`` does); raises ``NotFound``."""
    record = load_outage(conn, outage_id)
    if record is None:
        raise NotFound(f"no outage {outage_id}")
    affected: list[dict[str, Any]] = []
    if record.first_number is not None:
        last = record.sammelbeleg_number or record.last_number or record.first_number
        rows = conn.execute(_AFFECTED, (record.register_id, record.first_number, last))
        affected = [dict(r) for r in rows]
    events = _events(conn, record)
    return {
        "outage": outage_json(record),
        "duration_hours": round(record.age_seconds / 3600, 2),
        "affected_receipts": affected,
        "sammelbeleg": _sammelbeleg(conn, record),
        "escalations": [e for e in events if e["kind"] == "outage.escalation"],
        "reports": [e for e in events if e["kind"] == "outage.reported"],
        "probes": sum(1 for e in events if e["kind"] == "outage.probe"),
        "clock_jumps": [e for e in events if e["kind"] == "clock.jump"],
    }


def _sammelbeleg(conn: sqlite3.Connection, record: OutageRecord) -> dict[str, Any] | None:
    if record.sammelbeleg_number is None:
        return None
    row = conn.execute(
        "SELECT number, receipt_id, issued_at, signature_state, jws FROM receipts"
        " WHERE register_id = ? AND number = ?",
        (record.register_id, record.sammelbeleg_number),
    ).fetchone()
    return None if row is None else dict(row)


def _events(conn: sqlite3.Connection, record: OutageRecord) -> list[dict[str, Any]]:
    """Journal events about this outage (and clock jumps of its register while open)."""
    end = record.ended_at or "9999"
    rows = conn.execute(
        "SELECT seq, at, kind, data FROM journal WHERE register_id = ? AND kind IN"
        " ('outage.escalation', 'outage.reported', 'outage.probe', 'clock.jump')"
        " AND at >= ? ORDER BY seq",
        (record.register_id, record.started_at),
    )
    out = []
    for row in rows:
        data = json.loads(row["data"])
        if row["kind"] == "clock.jump":
            if row["at"] > end:
                continue
        elif data.get("outage") != record.id:
            continue
        out.append({"seq": row["seq"], "at": row["at"], "kind": row["kind"], **data})
    return out


def render_evidence(pack: dict[str, Any]) -> str:
    """The evidence pack as plain text, one fact per line."""
    o = pack["outage"]
    lines = [
        f"Ausfall der Signaturerstellungseinheit / signature unit outage #{o['id']}",
        f"Kasse (register):        {o['register']}",
        f"Einheit (unit):          {o['unit']}",
        f"Beginn (start, UTC):     {o['started_at']}",
        f"Ende (end, UTC):         {o['ended_at'] or 'still open'}",
        f"Dauer (hours):           {pack['duration_hours']}{'' if o['ended_at'] else ' so far'}",
        f"Ursache (cause):         {o['cause']}",
        f"Sonden (probes):         {pack['probes']}",
        f"Meldung fällig bis:      {o['report_due_at'] or '-'}",
        f"Meldung (report ref):    {o['report_reference'] or '-'}",
        f"Endemeldung fällig bis:  {o['end_report_due_at'] or '-'}",
        f"Endemeldung (end ref):   {o['end_report_reference'] or '-'}",
        "",
        f"Betroffene Belege (affected receipts): {len(pack['affected_receipts'])}",
    ]
    for r in pack["affected_receipts"]:
        lines.append(
            f"  {r['number']:>8}  {r['receipt_id']:<16} {r['issued_at']}  {r['kind']:<12}"
            f" {r['signature_state']:<9} {r['total_cents'] / 100:>10.2f}"
        )
    sammel = pack["sammelbeleg"]
    lines.append("")
    if sammel is None and o["ended_at"] is not None:  # ended by the register's Schlussbeleg
        lines.append(
            f"Sammelbeleg: none, the register was decommissioned inside the outage (its"
            f" Schlussbeleg, number {o['last_number']}, carries the failure marker)"
        )
    elif sammel is None:
        lines.append("Sammelbeleg: not yet issued")
    else:
        lines.append(
            f"Sammelbeleg: number {sammel['number']} ({sammel['receipt_id']}),"
            f" {sammel['issued_at']}, {sammel['signature_state']}"
        )
    lines.append("")
    lines.append(f"Eskalationen (escalations): {len(pack['escalations'])}")
    lines.extend(
        f"  {e['at']}  {e['level']:<12} after {e['age_hours']} h" for e in pack["escalations"]
    )
    if pack["clock_jumps"]:
        lines.append("Uhrsprünge (clock jumps):")
        lines.extend(_jump_line(e) for e in pack["clock_jumps"])
    return "\n".join(lines) + "\n"


def _jump_line(event: dict[str, Any]) -> str:
    """A clock jump, and what it added to the age of outages found open at a start (their
    off-time was measured by a clock that was behind)."""
    line = f"  {event['at']}  {event['delta_seconds']:+.0f} s ({event['when']})"
    aged = event.get("outages_aged") or []
    added = ", ".join(f"outage {a['outage']} +{a['added_seconds']:.0f} s" for a in aged)
    return f"{line}; added to the age of {added}" if added else line

"""Storing a signed (or fallback, or unsigned) receipt in its write transaction.

The receipt's row and its journal event, the register moved on to it, and what it settles:
its month, a waiting Jahresbeleg, the outage its Sammelbeleg closes (or a Schlussbeleg
with the failure marker ends). The step after signing in
:meth:`agent.issuing.Issuing.issue_in` (DESIGN.md invariant 1); the receipts a process
left while a chain service signed (:mod:`agent.interrupted`) and a Schlussbeleg sent again
(:mod:`agent.recovery`) are stored the same way.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from agent.outages import OutageBook
from agent.receipt_records import MUST_SIGN, Stored, receipt_event
from agent.remedy import supersede_lost
from agent.waiting import record_waiting
from storage.journal import append_encoded

__all__ = ["store_receipt"]

_INSERT_RECEIPT = (
    "INSERT INTO receipts (register_id, number, receipt_id, kind, request_id, sale_hash,"
    " issued_at, amount_normal, amount_reduced1, amount_reduced2, amount_zero, amount_special,"
    " turnover_cents, jws, signature_state, unit_id, voids_number, document, journal_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# never back: a Jahresbeleg that waited is issued after the Monatsbelege of the months
# after it (agent.closings), and its month is not the register's last closing then
_MOVE_LAST_CLOSING = (
    "UPDATE registers SET last_closing = ? WHERE id = ?"
    " AND (last_closing IS NULL OR last_closing < ?)"
)
_UPDATE_REGISTER = (
    "UPDATE registers SET last_number = ?, turnover_cents = ?, last_jws = ?,"
    " last_issued_at = ?, state = ? WHERE id = ?"
)


def store_receipt(
    conn: sqlite3.Connection,
    outages: OutageBook,
    stored: Stored,
    document: dict[str, Any],
    at: dt.datetime,
) -> None:
    """Insert the receipt (``document``: its document, parsed) and its journal event; move
    the register on to it and settle what it settles (``outages``: the book of the
    transaction's outages)."""
    seq = append_encoded(
        conn,
        kind="receipt.issued",
        register_id=stored.register_id,
        body=receipt_event(stored),
        at=at.isoformat(),
    )
    conn.execute(
        _INSERT_RECEIPT,
        (
            stored.register_id,
            stored.number,
            stored.receipt_id,
            stored.kind,
            stored.request_id,
            stored.sale_hash,
            stored.issued_at,
            *stored.amounts,
            stored.turnover,
            stored.jws,
            stored.state,
            stored.unit_id,
            stored.voids,
            stored.document,
            seq,
        ),
    )
    closed = "closed" if stored.kind == "closing" else "active"
    conn.execute(
        _UPDATE_REGISTER,
        (
            stored.number,
            stored.turnover,
            stored.jws,
            stored.issued_at,
            closed,
            stored.register_id,
        ),
    )
    _after_store(conn, outages, stored, document.get("period"), at)


def _after_store(
    conn: sqlite3.Connection,
    outages: OutageBook,
    stored: Stored,
    period: str | None,
    at: dt.datetime,
) -> None:
    """What a stored receipt settles: its month, a waiting Jahresbeleg, the outage (its
    Sammelbeleg closes it; a Schlussbeleg with the marker ends the register inside it)."""
    register_id, kind, number, state = (
        stored.register_id,
        stored.kind,
        stored.number,
        stored.state,
    )
    lost = state != "signed" and kind in MUST_SIGN
    if period is not None and not lost:  # a lost Jahresbeleg leaves its month open
        conn.execute(_MOVE_LAST_CLOSING, (period, register_id, period))
    if lost and kind == "yearly":  # it waits (an unsigned Sammelbeleg: the outage)
        reason = f"Jahresbeleg {number} was sent, but no answer came; it is issued again"
        record_waiting(conn, register_id, "yearly", period, reason, at.isoformat())
    if state == "signed" and kind in MUST_SIGN:
        supersede_lost(conn, register_id, kind, period, number, at.isoformat())
    if kind == "sammelbeleg" and state == "signed" and outages.is_open(register_id):
        outages.close(conn, register_id, number, at)
    elif kind == "closing" and outages.is_open(register_id):  # (with the marker)
        outages.decommissioned(conn, register_id, number, at)

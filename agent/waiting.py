"""Special receipts waiting for their unit (the ``waiting_specials`` rows): a Startbeleg,
Jahresbeleg, Sammelbeleg or Schlussbeleg that must be signed and is issued by recovery.

A waiting Jahresbeleg is its month's closing, kept apart from the register's
``last_closing``: the Monatsbelege after it are issued on time meanwhile, with the
failure marker while the unit is down (:mod:`agent.closings`). Recovery issues it after
the Sammelbeleg that closes the outage its failure opened. rksv.md leaves that order
open: section 6 says only that both must be signed, and section 5 puts the Sammelbeleg
right after the last receipt with the failure marker or right after the first one signed
again (the Prüftool accepts both); we take the first, as the official test scenarios do.
The Jahresbeleg is dated when it is issued and carries the counter of then: the chain and
the dates only go forward (rksv.md 4; 7.1, dates non-decreasing). Its document's
``period`` names the December it closes (and the year of its Belegcheck).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from storage.journal import append_event

if TYPE_CHECKING:
    from storage.db import TillDB

__all__ = [
    "WAITING_FIELDS",
    "any_waiting",
    "open_waiting",
    "record_waiting",
    "start_waits",
    "waiting_done",
    "waiting_in",
    "waiting_periods",
    "waiting_rows",
]

WAITING_FIELDS = ("id", "register_id", "kind", "period", "reason", "requested_at")


def open_waiting(
    conn: sqlite3.Connection, register_id: str, kind: str, period: str | None
) -> sqlite3.Row | None:
    """The register's special receipt of ``kind`` (and ``period``) still waiting, if any."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM waiting_specials WHERE register_id = ? AND kind = ?"
        " AND (period IS ? OR ? IS NULL) AND done_at IS NULL ORDER BY id LIMIT 1",
        (register_id, kind, period, period),
    ).fetchone()
    return row


def waiting_rows(conn: sqlite3.Connection, register_id: str | None) -> list[sqlite3.Row]:
    """The special receipts still waiting (of ``register_id``, or all), oldest first."""
    rows: list[sqlite3.Row] = conn.execute(
        "SELECT * FROM waiting_specials WHERE done_at IS NULL"
        " AND (? IS NULL OR register_id = ?) ORDER BY id",
        (register_id, register_id),
    ).fetchall()
    return rows


def waiting_periods(conn: sqlite3.Connection, register_id: str, kind: str) -> set[str]:
    """The months ("YYYY-MM") whose closing of ``kind`` waits for the register's unit."""
    rows = conn.execute(
        "SELECT period FROM waiting_specials WHERE register_id = ? AND kind = ?"
        " AND period IS NOT NULL AND done_at IS NULL",
        (register_id, kind),
    ).fetchall()
    return {str(row[0]) for row in rows}


def any_waiting(conn: sqlite3.Connection, register_id: str) -> bool:
    """Whether a special receipt of the register waits."""
    return bool(
        conn.execute(
            "SELECT 1 FROM waiting_specials WHERE register_id = ? AND done_at IS NULL",
            (register_id,),
        ).fetchone()
    )


def record_waiting(  # noqa: PLR0917 - the columns of the waiting row, in order
    conn: sqlite3.Connection,
    register_id: str,
    kind: str,
    period: str | None,
    reason: str,
    now: str,
    setup: str | None = None,
) -> None:
    """The special receipt waits from ``now`` (journaled, with an alert); nothing if it
    waits already."""
    if open_waiting(conn, register_id, kind, period) is not None:
        return
    conn.execute(
        "INSERT INTO waiting_specials (register_id, kind, period, reason, setup,"
        " requested_at) VALUES (?, ?, ?, ?, ?, ?)",
        (register_id, kind, period, reason, setup, now),
    )
    facts = {"kind": kind, "period": period, "reason": reason}
    append_event(conn, kind="special.waiting", register_id=register_id, at=now, data=facts)
    alert = {"level": "warning", "alert": "special-receipt-waiting", **facts}
    append_event(conn, kind="alert.raised", register_id=register_id, at=now, data=alert)


def start_waits(
    conn: sqlite3.Connection, register_id: str, pending: str, reason: str, now: str
) -> bool:
    """The register waits for its Startbeleg, sent with the setup ``pending`` (JSON);
    ``False`` if it waited for that one already."""
    waiting = open_waiting(conn, register_id, "start", None)
    if waiting is None:
        record_waiting(conn, register_id, "start", None, reason, now, pending)
    elif waiting["setup"] != pending:
        conn.execute("UPDATE waiting_specials SET setup = ? WHERE id = ?", (pending, waiting["id"]))
    else:
        return False
    return True


def waiting_done(conn: sqlite3.Connection, row: Any, number: int, now: str) -> None:
    """The waiting ``row`` is issued as receipt ``number``."""
    conn.execute(
        "UPDATE waiting_specials SET done_at = ?, number = ? WHERE id = ?",
        (now, number, row["id"]),
    )
    append_event(
        conn,
        kind="special.issued",
        register_id=row["register_id"],
        at=now,
        data={"kind": row["kind"], "period": row["period"], "number": number},
    )


def waiting_in(db: TillDB, register_id: str, kind: str) -> sqlite3.Row | None:
    """:func:`open_waiting` (of any period), read in a connection of its own."""
    with db.read_connection() as conn:
        return open_waiting(conn, register_id, kind, None)

"""The chain signings a process left unfinished: its intent committed, its receipt not.

Each write transaction of :class:`agent.issuing.Issuing` first stores them
(:func:`store_interrupted`), as a lost answer would have stored them, so their numbers
are never given to another receipt; recovery (:mod:`agent.recovery`) adopts or remedies
them once the chain service answers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from agent.errors import FiscalError
from agent.receipt_records import Stored, intended, receipt_row
from agent.registers import CLOSING_SENT, register_row
from agent.remedy import resolve
from agent.waiting import open_waiting, record_waiting, start_waits
from storage.journal import append_event, canonical_json

if TYPE_CHECKING:
    from agent.issuing import Issuing

__all__ = ["LIVE_INTENTS", "store_interrupted"]

_log = logging.getLogger(__name__)


def store_interrupted(issuing: Issuing, conn: sqlite3.Connection) -> None:
    """Store each signing whose process ended while the chain service signed (or before
    its COMMIT) as a lost answer would have: the service may hold it signed, so its
    number is never given to another receipt (recovery adopts or remedies it)."""
    for row in conn.execute(_INTERRUPTED).fetchall():
        _store_one(issuing, conn, row)


def _now(issuing: Issuing) -> str:
    return issuing.clock.now().isoformat()


def _store_one(issuing: Issuing, conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    """Store the signing of intent ``row``, unless it is void or waits already."""
    intent = json.loads(row["intent"])
    if "void" in intent:
        return
    waits = "setup" in intent or row["kind"] == "closing"  # sent again unchanged
    if "setup" in intent:
        setup = canonical_json(intent["setup"])
        if not start_waits(conn, row["register_id"], setup, _START_INTERRUPTED, _now(issuing)):
            return  # it waits already (its answer was lost, or an earlier start)
    elif row["kind"] == "closing":
        if not _closing_waits(issuing, conn, intent):
            return
    else:
        _store_lost(issuing, conn, intent)
    facts = {"number": row["number"], "kind": row["kind"], "intent": row["id"]}
    now = _now(issuing)
    append_event(
        conn, kind="signing.interrupted", register_id=row["register_id"], at=now, data=facts
    )
    _log.warning(
        "register %s: the %s receipt %d was being signed by the chain service when"
        " the process ended (or its transaction failed); %s",
        row["register_id"],
        row["kind"],
        row["number"],
        "it waits and is sent again unchanged"
        if waits
        else "stored unsigned until the service answers",
    )


def _store_lost(issuing: Issuing, conn: sqlite3.Connection, intent: dict[str, Any]) -> None:
    """Store an intent's receipt ``unsigned``, with all its lost answer would have done."""
    stored = intended(intent)
    register_id, number = stored.register_id, stored.number
    _check_follows(conn, stored)
    at = issuing.clock.now()
    cause = f"the process ended while the chain service signed receipt {number}"
    issuing.outages.not_signed(conn, register_id, stored.unit_id, cause, number, at)
    document = json.loads(stored.document)
    issuing.store(conn, stored, document, at)
    if "reissue_of" in document:  # as Recovery._close_outage does after a lost reissue
        old = receipt_row(conn, register_id, document["reissue_of"])
        assert old is not None  # the original precedes its reissue in the same register
        resolve(
            conn,
            old,
            "superseded",
            at.isoformat(),
            replacement=number,
            voided_by=intent["voided_by"],
        )


def _check_follows(conn: sqlite3.Connection, stored: Stored) -> None:
    """An interrupted receipt's number is the register's next (nothing came after it)."""
    if register_row(conn, stored.register_id)["last_number"] != stored.number - 1:
        raise FiscalError(
            f"register {stored.register_id}: the signing intent of receipt"
            f" {stored.number} does not follow the register's last receipt; the till"
            " database is inconsistent"
        )


def _closing_waits(issuing: Issuing, conn: sqlite3.Connection, intent: dict[str, Any]) -> bool:
    """The register waits for a Schlussbeleg the chain service may hold: closed to
    sales, it is sent again unchanged by recovery (:meth:`agent.recovery.Recovery.recover`).
    ``False``: it waits already."""
    stored = intended(intent)
    if open_waiting(conn, stored.register_id, "closing", None) is not None:
        return False
    _check_follows(conn, stored)
    reason = CLOSING_SENT.format(register=stored.register_id)
    setup = canonical_json(intent)
    record_waiting(conn, stored.register_id, "closing", None, reason, _now(issuing), setup)
    conn.execute("UPDATE registers SET state = 'closed' WHERE id = ?", (stored.register_id,))
    return True


# intents whose receipt is missing, the last one per receipt number (a void one included).
# Numbers are gap-free and last_number moves with each receipt stored, so only an intent
# past its register's last number, or a Startbeleg's of a register not created, can lack
# its receipt: both parts seek an index (0006), and a start costs the same after a million
# intents as after ten (CROSS JOIN keeps the few registers the outer loop).
LIVE_INTENTS = (
    "SELECT p.* FROM registers g CROSS JOIN pending_signings p"
    " ON p.register_id = g.id AND p.number > g.last_number"
    " WHERE p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
    " UNION ALL SELECT p.* FROM pending_signings p WHERE p.kind = 'start'"
    " AND NOT EXISTS (SELECT 1 FROM registers g WHERE g.id = p.register_id)"
    " AND p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
)
_INTERRUPTED = LIVE_INTENTS + " ORDER BY id"
_START_INTERRUPTED = (
    "its Startbeleg was sent to the chain service when the till process ended; it waits and"
    " is sent again unchanged as soon as the service answers (till-agent outage recover)"
)

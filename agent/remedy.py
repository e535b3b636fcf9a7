"""The remedy of unsigned receipts (DESIGN.md invariant 5): how each is resolved (adopted,
or superseded by a reissue, a signed Sammel-/Jahresbeleg or the POS's Storno), and the
drafts that reissue a sale. Module functions on the caller's write connection; the
recovery that issues the receipts is :class:`agent.recovery.Recovery`."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent.receipt_records import Draft, receipt_row, stored_lines
from agent.receipt_view import AMOUNT_COLUMNS
from storage.journal import append_event

# the kinds a remedy reissues: sales (DESIGN.md invariant 5). A zero receipt may carry the
# failure marker (rksv.md 5): a lost Monats-/Nullbeleg stands as it is (see resolve's kept)
REISSUED = frozenset({"standard", "storno", "training"})

# the unsigned receipts not yet remedied, through ix_receipts_unsigned (0009): its WHERE,
# ``signature_state = 'unsigned'``, is repeated here word for word (or SQLite reads them all)
UNRESOLVED = (
    "SELECT r.* FROM receipts r LEFT JOIN receipt_resolutions x"
    " ON x.register_id = r.register_id AND x.number = r.number"
    " WHERE r.signature_state = 'unsigned' AND x.number IS NULL"
    " AND (? IS NULL OR r.register_id = ?) ORDER BY r.register_id, r.number"
)
# the receipts that void one receipt, in number order, through ix_receipts_voids (0009);
# the remedy tells its own Storno from the POS's in Python: a condition on another
# column here (request_id IS NULL) drew the planner to that column's index instead
STORNOS_OF = (
    "SELECT number, kind, request_id, document FROM receipts"
    " WHERE register_id = ? AND voids_number = ? ORDER BY number"
)

__all__ = [
    "REISSUED",
    "STORNOS_OF",
    "UNRESOLVED",
    "current_version",
    "reissue_draft",
    "remedy_storno",
    "resolve",
    "resolve_voided",
    "supersede_lost",
    "unresolved",
    "void_draft",
]


def resolve(
    conn: sqlite3.Connection,
    row: sqlite3.Row,
    resolution: str,
    now: str,
    *,
    signed_jws: str | None = None,
    replacement: int | None = None,
    voided_by: int | None = None,
    kept: bool = False,
) -> None:
    """Resolve the unsigned receipt ``row`` (``adopted`` or ``superseded``), journaled.

    ``voided_by``: the Storno that voided it, stored with the resolution (the views read
    it there, :mod:`agent.receipt_view`) and named by the journal event.
    ``kept``: a zero receipt the chain service does not have stands with the failure
    marker (it is superseded by nothing, and nothing is reissued for it).
    """
    conn.execute(
        "INSERT INTO receipt_resolutions (register_id, number, resolution, signed_jws,"
        " replacement_number, at, voided_number) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row["register_id"], row["number"], resolution, signed_jws, replacement, now, voided_by),
    )
    data: dict[str, Any] = {
        "number": row["number"],
        "jws": signed_jws,
        "replacement": replacement,
    }
    if voided_by is not None:
        data["voided_by"] = voided_by
    if kept:
        data["kept"] = True
    append_event(
        conn, kind=f"receipt.{resolution}", register_id=row["register_id"], at=now, data=data
    )


def unresolved(conn: sqlite3.Connection, register_id: str | None) -> list[sqlite3.Row]:
    return conn.execute(UNRESOLVED, (register_id, register_id)).fetchall()


def supersede_lost(  # noqa: PLR0917 - the signed receipt's facts
    conn: sqlite3.Connection,
    register_id: str,
    kind: str,
    period: str | None,
    number: int,
    now: str,
) -> None:
    """A signed Sammel-/Jahresbeleg supersedes the unresolved unsigned ones of its kind
    (and month): their obligation is met now. Their numbers stay theirs (the chain
    service may hold them signed); zero receipts need no Storno."""
    for row in unresolved(conn, register_id):
        if row["kind"] == kind and json.loads(row["document"]).get("period") == period:
            resolve(conn, row, "superseded", now, replacement=number)


def resolve_voided(
    conn: sqlite3.Connection, sales: list[sqlite3.Row], now: str
) -> list[tuple[sqlite3.Row, int | None]]:
    """Resolve the unsigned sales the POS has voided already; return the others, each
    with the remedy's own Storno of it (:func:`remedy_storno`), if any.

    A voided sale gets neither a Storno (it would be voided twice) nor a replacement
    (the customer's sale was cancelled): it is superseded by nothing, its Storno named.
    The remedy's own Storno does not count: the remedy had begun, so it is reissued.
    """
    rest = []
    for old in sales:
        remedy = remedy_storno(conn, old)
        storno = _first_storno(conn, old) if remedy is None else None
        if storno is None:
            rest.append((old, remedy))
        else:
            resolve(conn, old, "superseded", now, voided_by=storno)
    return rest


def remedy_storno(conn: sqlite3.Connection, old: sqlite3.Row) -> int | None:
    """The remedy's Storno of ``old`` when its process ended before ``old`` was reissued
    (stored from its intent): the next remedy reissues ``old`` without a second one.

    Only a remedy makes a Storno without a request_id that is no reissue, and it resolves
    ``old`` in the same transaction unless the process died while the Storno was signed.
    """
    for row in _stornos_of(conn, old):
        made = row["kind"] == "storno" and row["request_id"] is None
        if made and json.loads(row["document"]).get("reissue_of") is None:
            return int(row["number"])
    return None


def _first_storno(conn: sqlite3.Connection, old: sqlite3.Row) -> int | None:
    """The first receipt that voids ``old`` (the POS Storno, or its reissue), whatever its
    state; ``None`` when none does."""
    stornos = _stornos_of(conn, old)
    return int(stornos[0]["number"]) if stornos else None


def _stornos_of(conn: sqlite3.Connection, old: sqlite3.Row) -> list[sqlite3.Row]:
    return conn.execute(STORNOS_OF, (old["register_id"], old["number"])).fetchall()


def reissue_draft(conn: sqlite3.Connection, old: sqlite3.Row) -> Draft:
    """The signed receipt that replaces the unsigned sale ``old``.

    Raises:
        ValueError: ``old`` is no sale (:data:`REISSUED`).
    """
    if old["kind"] not in REISSUED:
        raise ValueError(f"only sales are reissued, not a {old['kind']} receipt")
    document = json.loads(old["document"])
    voids = receipt_row(conn, old["register_id"], old["voids_number"])
    return Draft(
        old["register_id"],
        old["kind"],
        tuple(old[c] for c in AMOUNT_COLUMNS),
        voids=voids,
        lines=tuple(tuple(x) for x in document["lines"]),
        payments=tuple(tuple(p) for p in document["payments"]),
        cashier=document.get("cashier"),
        force_sign=True,
        reissue_of=old,
    )


def void_draft(old: sqlite3.Row) -> Draft:
    """The signed Storno that takes back a counted receipt the remedy supersedes.

    The unsigned original stays in the DEP and in the counter (a marker receipt counts);
    without this Storno its replacement would count the sale a second time. A superseded
    Storno is reversed the same way (positive amounts), then reissued itself.
    """
    document = json.loads(old["document"])
    return Draft(
        old["register_id"],
        "storno",
        tuple(-old[c] for c in AMOUNT_COLUMNS),
        voids=old,
        lines=tuple((t, q, p, v, -c) for t, q, p, v, c in stored_lines(old)),
        payments=tuple((m, -a) for m, a in document["payments"]),
        cashier=document.get("cashier"),
        force_sign=True,
    )


def current_version(conn: sqlite3.Connection, row: Any) -> Any:
    """The receipt that now stands for ``row``: its replacement if it was superseded."""
    if row["signature_state"] != "unsigned":
        return row
    replacement = conn.execute(
        "SELECT r.* FROM receipt_resolutions x JOIN receipts r ON r.register_id = x.register_id"
        " AND r.number = x.replacement_number WHERE x.register_id = ? AND x.number = ?",
        (row["register_id"], row["number"]),
    ).fetchone()
    return row if replacement is None else replacement

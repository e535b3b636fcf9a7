"""The append-only journal: one global sequence, each event carrying the previous hash.

Events are appended inside the caller's write transaction, so an event and the state
change it records commit together or not at all.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from storage.canonical import canonical_json
from storage.models import JOURNAL

__all__ = [
    "GENESIS",
    "Event",
    "append_encoded",
    "append_event",
    "canonical_json",
    "event_hash",
    "iter_events",
    "verify_journal",
]

GENESIS = "0" * 64
_J = JOURNAL


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    at: str
    register_id: str | None
    kind: str
    data: str
    prev_hash: str
    hash: str


def event_hash(  # noqa: PLR0917 - the fields of one event, in their hashed order
    seq: int, at: str, register_id: str | None, kind: str, data: str, prev: str
) -> str:
    """SHA-256 over the event's fields and the previous event's hash."""
    material = "\x1f".join([str(seq), at, register_id or "", kind, data, prev])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def append_event(
    conn: sqlite3.Connection,
    *,
    kind: str,
    register_id: str | None,
    data: Mapping[str, Any],
    at: str,
) -> int:
    """Append one event inside the caller's open write transaction; return its sequence."""
    return append_encoded(
        conn, kind=kind, register_id=register_id, body=canonical_json(data), at=at
    )


def append_encoded(
    conn: sqlite3.Connection,
    *,
    kind: str,
    register_id: str | None,
    body: str,
    at: str,
) -> int:
    """:func:`append_event` for data already in its canonical JSON form ``body`` (the
    receipt's event, built as text: :func:`agent.receipt_records.receipt_event`)."""
    last = conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (1, GENESIS) if last is None else (int(last[0]) + 1, str(last[1]))
    digest = event_hash(seq, at, register_id, kind, body, prev)
    conn.execute(
        "INSERT INTO journal (seq, at, register_id, kind, data, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, at, register_id, kind, body, prev, digest),
    )
    return seq


def iter_events(conn: Connection, after: int = 0) -> Iterator[Event]:
    """Events with a sequence greater than ``after``, in order."""
    rows = conn.execute(select(_J).where(_J.c.seq > after).order_by(_J.c.seq))
    for row in rows:
        yield Event(row.seq, row.at, row.register_id, row.kind, row.data, row.prev_hash, row.hash)


def verify_journal(conn: Connection) -> list[str]:
    """Problems with the journal's sequence and hash chain; an empty list means intact."""
    problems: list[str] = []
    expected_seq, prev = 1, GENESIS
    for event in iter_events(conn):
        if event.seq != expected_seq:
            problems.append(f"seq {event.seq}: expected {expected_seq} (gap or reorder)")
        if event.prev_hash != prev:
            problems.append(f"seq {event.seq}: prev_hash does not match the previous event")
        digest = event_hash(
            event.seq, event.at, event.register_id, event.kind, event.data, event.prev_hash
        )
        if digest != event.hash:
            problems.append(f"seq {event.seq}: hash does not match the event's content")
        expected_seq, prev = event.seq + 1, event.hash
    return problems

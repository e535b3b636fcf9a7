"""The ``print_jobs`` table: one row per print of a receipt, the original (copy 0) or a
copy, and what the print worker asks of it.

A job holds its ESC/POS bytes while it is open (``queued`` or ``failed``: every retry
sends the same bytes, but for an ``unsigned`` receipt remedied meanwhile, which the worker
renders again as it stands then) and none once it is ``printed`` or ``skipped``; a copy
is rendered again from the stored receipt. The worker finds the open jobs through
``ix_print_jobs_open``, a partial index of only those: :data:`OPEN_JOBS` and
:data:`QUEUED_PRINTS` (the status's count) repeat its WHERE word for word, as SQLite uses a
partial index only then. The receipts without a job are found through the unique
(register, number, copy).

The jobs of one receipt print in order, the original first, then the copies by number:
an original added after copies of its receipt were queued (a reprint asked for before
the worker reached the receipt) takes their place and they move behind it
(:func:`add_original`), and the worker holds back a copy whose original is still to come
(:func:`held_copies`); a queue an earlier release left out of order is put in order when
the worker starts (:func:`reorder_open`).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping, Sequence

from storage.journal import append_event

__all__ = [
    "MISSING",
    "OPEN_JOBS",
    "QUEUED_PRINTS",
    "add_job",
    "add_original",
    "held_copies",
    "last_original",
    "next_copy",
    "of_unsigned",
    "record_failed",
    "record_printed",
    "reorder_open",
    "skip_open",
]

# the receipts of a register past a number that have no job: (number, register, limit)
MISSING = (
    "SELECT r.* FROM receipts r WHERE r.number > ? AND r.register_id = ? AND NOT EXISTS"
    " (SELECT 1 FROM print_jobs p WHERE p.register_id = r.register_id AND p.number = r.number"
    " AND p.copy = 0) ORDER BY r.number LIMIT ?"
)
# the WHERE of ix_print_jobs_open (migration 0008), word for word
_OPEN = "state IN ('queued', 'failed')"
# the open jobs in the order they were queued: (limit)
OPEN_JOBS = (
    f"SELECT id, register_id, number, copy, data FROM print_jobs WHERE {_OPEN} ORDER BY id LIMIT ?"  # noqa: S608
)
# how many jobs are open (the status's queued prints)
QUEUED_PRINTS = f"SELECT count(*) FROM print_jobs WHERE {_OPEN}"  # noqa: S608
# the open copies of a receipt queued before its original's job, by copy: (register, number)
_COPIES_AHEAD = (
    f"SELECT id FROM print_jobs WHERE register_id = ?1 AND number = ?2 AND copy > 0 AND {_OPEN}"  # noqa: S608
    " AND id < (SELECT id FROM print_jobs WHERE register_id = ?1 AND number = ?2 AND copy = 0)"
    " ORDER BY copy"
)
# the receipts with an open copy queued before an open earlier job of theirs
_MISORDERED = (
    "SELECT DISTINCT c.register_id, c.number FROM print_jobs c"
    " WHERE c.state IN ('queued', 'failed') AND c.copy > 0 AND EXISTS (SELECT 1 FROM print_jobs e"
    " WHERE e.register_id = c.register_id AND e.number = c.number AND e.copy < c.copy"
    " AND e.state IN ('queued', 'failed') AND e.id > c.id)"
)
# the open copies of a receipt, by copy: (register, number)
_OPEN_COPIES = (
    f"SELECT id FROM print_jobs WHERE register_id = ? AND number = ? AND copy > 0 AND {_OPEN}"  # noqa: S608
    " ORDER BY copy"
)
# a job moved behind every other: (id)
_TO_THE_END = "UPDATE print_jobs SET id = (SELECT max(id) + 1 FROM print_jobs) WHERE id = ?"


def add_job(  # noqa: PLR0917 - one print_jobs row
    conn: sqlite3.Connection,
    register_id: str,
    number: int,
    copy: int,
    data: bytes,
    state: str = "queued",
) -> bool:
    """Store a job (``skipped`` ones without bytes); one that exists is left as it is
    (False)."""
    inserted = conn.execute(
        "INSERT OR IGNORE INTO print_jobs (register_id, number, copy, data, state,"
        " attempts, created_at) VALUES (?, ?, ?, ?, ?, 0, ?)",
        (register_id, number, copy, data, state, _now()),
    )
    return inserted.rowcount == 1


def reorder_open(conn: sqlite3.Connection) -> int:
    """Put the open copies of each receipt behind its open original and in copy order,
    where a release before :func:`add_original` queued them ahead (a full batch of such
    copies, all held, would keep the worker from ever reaching the originals behind
    them); how many receipts were put in order."""
    receipts = conn.execute(_MISORDERED).fetchall()
    for register_id, number in receipts:
        for (job_id,) in conn.execute(_OPEN_COPIES, (register_id, number)).fetchall():
            conn.execute(_TO_THE_END, (job_id,))
    return len(receipts)


def add_original(
    conn: sqlite3.Connection, register_id: str, number: int, data: bytes, state: str = "queued"
) -> None:
    """Store a receipt's original job; copies of the receipt queued before it (a reprint
    asked for before the worker reached the receipt) move behind it, in copy order: the
    worker sends the open jobs in the order of their ids."""
    if not add_job(conn, register_id, number, 0, data, state):
        return
    for (job_id,) in conn.execute(_COPIES_AHEAD, (register_id, number)).fetchall():
        conn.execute(_TO_THE_END, (job_id,))


def held_copies(jobs: Sequence[sqlite3.Row], last_originals: Mapping[str, int]) -> set[int]:
    """The ids of those ``jobs`` that are copies which must not print yet: their receipt
    is past its register's last original job (``last_originals``: the worker adds the
    original's job later, and :func:`add_original` moves the copy behind it). A copy
    behind its original cannot be ahead of an earlier job of its receipt otherwise: the
    original moves the copies before it, copies are numbered in the order they are
    queued, and a queue an earlier release left otherwise is put in order at the
    worker's start (:func:`reorder_open`)."""
    return {
        int(job["id"])
        for job in jobs
        if job["copy"] > 0 and job["number"] > last_originals.get(job["register_id"], 0)
    }


def last_original(conn: sqlite3.Connection, register_id: str) -> int | None:
    """The number of the register's last receipt that has a job; None if none has."""
    number = conn.execute(
        "SELECT max(number) FROM print_jobs WHERE register_id = ? AND copy = 0", (register_id,)
    ).fetchone()[0]
    return None if number is None else int(number)


def next_copy(conn: sqlite3.Connection, register_id: str, number: int) -> int:
    """The copy number the next reprint of a receipt gets (1 for the first)."""
    return int(
        conn.execute(
            "SELECT coalesce(max(copy), 0) + 1 FROM print_jobs"
            " WHERE register_id = ? AND number = ?",
            (register_id, number),
        ).fetchone()[0]
    )


def of_unsigned(conn: sqlite3.Connection, jobs: Sequence[sqlite3.Row]) -> set[int]:
    """The ids of those ``jobs`` whose receipt is ``unsigned`` (one whose remedy may come
    after its bytes were rendered): a lookup per job in ``ix_receipts_unsigned`` (0009),
    whose WHERE the query repeats word for word, an index of only those rare receipts."""
    return {
        int(job["id"])
        for job in jobs
        if conn.execute(
            "SELECT 1 FROM receipts WHERE register_id = ? AND number = ?"
            " AND signature_state = 'unsigned'",
            (job["register_id"], job["number"]),
        ).fetchone()
    }


def record_printed(
    conn: sqlite3.Connection, job_id: int, *, register_id: str, number: int, recovered: bool
) -> None:
    """The printer took the job: ``printed``, its bytes dropped; ``recovered`` (the first
    job after a failure streak) journals ``printer.recovered``."""
    conn.execute(
        "UPDATE print_jobs SET state = 'printed', data = x'', attempts = attempts + 1,"
        " done_at = ?, last_error = NULL WHERE id = ?",
        (_now(), job_id),
    )
    if recovered:
        append_event(
            conn,
            kind="printer.recovered",
            register_id=register_id,
            at=_now(),
            data={"number": number},
        )


def record_failed(
    conn: sqlite3.Connection,
    job_id: int,
    message: str,
    *,
    register_id: str,
    number: int,
    first: bool,
) -> None:
    """The printer did not take the job: ``failed`` (kept, retried); ``first`` (the start
    of a failure streak) journals ``printer.failed``."""
    conn.execute(
        "UPDATE print_jobs SET state = 'failed', attempts = attempts + 1,"
        " last_error = ? WHERE id = ?",
        (message, job_id),
    )
    if first:
        append_event(
            conn,
            kind="printer.failed",
            register_id=register_id,
            at=_now(),
            data={"number": number, "error": message},
        )


def skip_open(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """Mark every open job ``skipped`` (its bytes dropped): printing is off (kind
    ``none``), so nothing would ever take them. Returns (register, number, copy) of each."""
    skipped = [
        (str(r[0]), int(r[1]), int(r[2]))
        for r in conn.execute(
            f"SELECT register_id, number, copy FROM print_jobs WHERE {_OPEN} ORDER BY id"  # noqa: S608
        )
    ]
    conn.execute(
        f"UPDATE print_jobs SET state = 'skipped', data = x'', done_at = ?,"  # noqa: S608
        f" last_error = 'printing is off ([printer] kind = none)' WHERE {_OPEN}",
        (_now(),),
    )
    return skipped


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()

"""Outages of a register's signature unit: records, not moods (DESIGN.md invariant 4).

An outage opens with the first failed signing (in the same transaction as the fallback
receipt that met the failure) and closes only with the signed Sammelbeleg, or ends with
the register's Schlussbeleg with the failure marker (see below), in the same transaction as
that receipt, so a crash can neither lose an outage nor issue a second Sammelbeleg (nor end
it twice). While it is open the receipt path does not call the unit at all (a circuit
breaker). Every change to the record is also a journal event.

A unit whose failure opened an outage (a signing that failed or timed out, a failed
probe, an open that failed) is known to fail until it signs again, for every register
bound to it: their receipts skip it too, each register's own outage opening with its first
one (:meth:`OutageBook.unit_down`). A unit that signs again is noted for the prober
(:meth:`OutageBook.units_back`), which recovers the other registers waiting for it at once.

A register decommissioned inside its outage (its Schlussbeleg carries the failure marker,
rksv.md 5: ``special closing --failed-ok``, the unit down for good) ends the outage without
a Sammelbeleg (:meth:`OutageBook.decommissioned`); no Wiederinbetriebnahme follows.

An outage that closes is aged first, by the watch's own rules (:meth:`OutageWatch.age_for_close`):
one past 48 hours is flagged and given its report date even if the timer never saw it
(``till-agent outage recover`` after days with the agent stopped); then its end report is
given its date (:meth:`OutageWatch.ended`), a week after the Sammelbeleg. An outage of
a development unit (AT100) owes neither (a development register is not registered in
FinanzOnline): it is aged and escalated all the same, and a due date an earlier version
recorded for one is read as none (:meth:`OutageRecord.from_row`).

Opening and closing are logged (WARNING, INFO) once the transaction that records them has
committed (:meth:`OutageBook.settle`), so the log never tells of an outage that a rollback
undid; the escalations of a closing outage (the reports it owes) follow its closed line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from agent.checks import development_units
from agent.outage_watch import Escalation, LogLine, OutageWatch, log_escalation
from storage.journal import append_event

__all__ = ["OutageBook", "OutageRecord", "load_outage", "load_outages"]

log = logging.getLogger(__name__)

_Key = tuple[str, int | None]  # register, its open outage (None: no outage open)

_COLUMNS = (
    "id, register_id, unit_id, started_at, cause, first_number, last_number, affected,"
    " probe_attempts, age_seconds, checked_at, escalations, report_due, report_reference,"
    " end_report_reference, end_report_due, ended_at, sammelbeleg_number"
)


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """One outage as stored."""

    id: int
    register_id: str
    unit_id: str
    started_at: str
    cause: str
    first_number: int | None
    last_number: int | None
    affected: int
    probe_attempts: int
    age_seconds: float
    checked_at: str
    escalations: tuple[str, ...]
    report_due: str | None
    report_reference: str | None
    end_report_reference: str | None
    end_report_due: str | None
    ended_at: str | None
    sammelbeleg_number: int | None

    @classmethod
    def from_row(cls, row: Any, development: Collection[str]) -> OutageRecord:
        """The outage of a row of ``_COLUMNS``; one of a development unit (``development``:
        their ids, :func:`~agent.checks.development_units`) owes no report, whatever an
        earlier version recorded (neither the status nor ``outage list`` shows a due date
        the watch no longer reminds of)."""
        values = list(row)
        values[11] = tuple(json.loads(values[11]))
        if values[2] in development:
            values[12] = values[15] = None  # report_due, end_report_due
        return cls(*values)


class OutageBook:
    """The open outages of this till, kept in memory and in the ``outages`` table.

    The in-memory set answers "is the breaker open?" without touching the database; it is
    loaded from the table at start, so an outage survives restarts.

    ``watch`` ages an outage as it closes: the one that ticks in the running agent (it knows
    its thresholds and the time it has seen), built with the receipt service's clock.
    """

    def __init__(self, conn: sqlite3.Connection, watch: OutageWatch) -> None:
        self._lock = threading.Lock()
        self.watch = watch
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM outages WHERE ended_at IS NULL"  # noqa: S608 - constant
        ).fetchall()
        self._open = {row[1]: int(row[0]) for row in rows}
        # (action, register or unit, outage) until commit; "down": a unit marked failing
        self._pending: list[tuple[str, str, int]] = []
        # units known to fail in this process (unit -> why), until they sign again; read
        # without the lock by the receipt path (one dict lookup)
        self._down: dict[str, str] = {}
        self._back: set[str] = set()  # units that signed again since the prober asked
        self._news: list[LogLine] = []  # what to log once the transaction has committed
        self._escalations: list[Escalation] = []  # the same, of closing outages (first)
        # why recovery failed after the unit answered: (register, outage) -> distinct reasons
        # journaled (in order), and the last reason seen (which may repeat an earlier one)
        self._reasons: dict[_Key, list[str]] = {}
        self._last_reason: dict[_Key, str] = {}
        self._pending_reasons: list[_Key] = []  # dropped from memory if the txn rolls back

    def settle(self, committed: bool) -> None:
        """Keep (after COMMIT) or undo (after ROLLBACK) the in-memory changes of a txn;
        log the outages it opened and closed only if it committed."""
        with self._lock:
            if not (self._pending or self._news or self._escalations or self._pending_reasons):
                return  # (most transactions: no list to swap at each receipt)
            pending, self._pending = self._pending, []
            news, self._news = self._news, []
            escalations, self._escalations = self._escalations, []
            reasons, self._pending_reasons = self._pending_reasons, []
            if not committed:
                for key in reasons:  # reloaded from the journal when next needed
                    self._reasons.pop(key, None)
                    self._last_reason.pop(key, None)
                for action, name, outage_id in reversed(pending):
                    if action == "down":  # name: a unit
                        self._down.pop(name, None)
                    elif action == "close":
                        self._open[name] = outage_id
                    elif self._open.get(name) == outage_id:
                        del self._open[name]
                return
        for level, message, args in news:
            log.log(level, message, *args)
        for escalation in escalations:
            log_escalation(*escalation)

    def open_registers(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def is_open(self, register_id: str) -> bool:
        with self._lock:
            return register_id in self._open

    def unit_down(self, unit_id: str) -> str | None:
        """Why ``unit_id`` is known to fail (it has not signed since), else ``None``.

        One dict lookup without the lock (atomic): the receipt path asks at every receipt.
        """
        return self._down.get(unit_id)

    def unit_failed(self, unit_id: str, cause: str) -> None:
        """``unit_id`` failed (a signing, a probe, its open), in the caller's transaction:
        the receipts of every register bound to it skip it until it signs again. A
        rollback forgets it, as it forgets the outage it opened."""
        with self._lock:
            if unit_id not in self._down:
                self._down[unit_id] = cause
                self._pending.append(("down", unit_id, 0))

    def unit_signed(self, unit_id: str) -> None:
        """``unit_id`` signed a receipt: it is no longer known to fail, and the prober is
        told (:meth:`units_back`). The signature is a fact whatever the transaction's fate."""
        with self._lock:
            self._down.pop(unit_id, None)
            self._back.add(unit_id)

    def units_back(self) -> set[str]:
        """The units that signed since the last call (for the prober: the registers whose
        outage waits for one of them are recovered now, not at their next probe)."""
        with self._lock:
            back, self._back = self._back, set()
            return back

    def open(
        self,
        conn: sqlite3.Connection,
        *,
        register_id: str,
        unit_id: str,
        cause: str,
        number: int | None,
        at: dt.datetime,
        unit_at_fault: bool = True,
    ) -> int:
        """Open an outage in the caller's transaction; ``number`` is the receipt that met it.
        ``unit_at_fault``: the unit failed (:meth:`unit_failed`), not the process that asked
        it (a chain signing interrupted when the agent stopped)."""
        stamp = at.isoformat()
        cursor = conn.execute(
            "INSERT INTO outages (register_id, unit_id, started_at, cause, first_number,"
            " last_number, affected, probe_attempts, age_seconds, checked_at, escalations)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, '[\"opened\"]')",
            (register_id, unit_id, stamp, cause, number, number, 0 if number is None else 1, stamp),
        )
        outage_id = int(cursor.lastrowid or 0)
        if unit_at_fault:
            self.unit_failed(unit_id, cause)
        append_event(
            conn,
            kind="outage.opened",
            register_id=register_id,
            at=stamp,
            data={"outage": outage_id, "unit": unit_id, "cause": cause, "first_number": number},
        )
        # its first escalation level, here and not at the watch's next tick: an outage
        # shorter than the tick interval would otherwise never show it was announced
        append_event(
            conn,
            kind="outage.escalation",
            register_id=register_id,
            at=stamp,
            data={"outage": outage_id, "level": "opened", "age_hours": 0.0, "report_due": None},
        )
        with self._lock:
            self._open[register_id] = outage_id
            self._pending.append(("open", register_id, outage_id))
            self._news.append(
                (
                    logging.WARNING,
                    "outage %d opened: register %s, unit %s, cause: %s; first affected receipt"
                    " %s (receipts skip the unit until it signs again)",
                    (outage_id, register_id, unit_id, cause, "-" if number is None else number),
                )
            )
        return outage_id

    def affected(
        self, conn: sqlite3.Connection, register_id: str, number: int, at: dt.datetime
    ) -> None:
        """Record one more fallback receipt of the open outage."""
        outage_id = self._id(register_id)
        conn.execute(
            "UPDATE outages SET last_number = ?, affected = affected + 1,"
            " first_number = COALESCE(first_number, ?) WHERE id = ?",
            (number, number, outage_id),
        )
        append_event(
            conn,
            kind="outage.receipt",
            register_id=register_id,
            at=at.isoformat(),
            data={"outage": outage_id, "number": number},
        )

    def not_signed(  # noqa: PLR0917 - the outage's facts, in the order it records them
        self,
        conn: sqlite3.Connection,
        register_id: str,
        unit_id: str,
        cause: str,
        number: int,
        at: dt.datetime,
        *,
        unit_at_fault: bool = False,
    ) -> None:
        """Receipt ``number`` is stored without a signature: it opens the register's outage
        (for ``cause``), or is one more receipt of the open one. ``unit_at_fault``: the unit
        failed it (False: a chain signing the stopped agent left, which says nothing of the
        unit; see :meth:`open`)."""
        if self.is_open(register_id):
            self.affected(conn, register_id, number, at)
        else:
            self.open(
                conn,
                register_id=register_id,
                unit_id=unit_id,
                cause=cause,
                number=number,
                at=at,
                unit_at_fault=unit_at_fault,
            )

    def probed(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        ok: bool,
        detail: str,
        at: dt.datetime,
    ) -> None:
        outage_id = self._id(register_id)
        conn.execute(
            "UPDATE outages SET probe_attempts = probe_attempts + 1 WHERE id = ?", (outage_id,)
        )
        if not ok:  # the unit the outage met: the other registers on it skip it too
            row = conn.execute("SELECT unit_id FROM outages WHERE id = ?", (outage_id,)).fetchone()
            self.unit_failed(str(row[0]), detail)
        append_event(
            conn,
            kind="outage.probe",
            register_id=register_id,
            at=at.isoformat(),
            data={"outage": outage_id, "ok": ok, "detail": detail},
        )

    def recovery_failed(
        self, conn: sqlite3.Connection, register_id: str, reason: str, at: dt.datetime
    ) -> None:
        """Record why recovery failed although the unit answered its probe (it cannot sign,
        e.g. invalid signatures), in the caller's transaction.

        Each distinct reason is journaled (``outage.recovery_failed``) and logged (WARNING)
        once per outage, so a unit that answers every probe does not grow the journal per
        probe; the last reason is kept for the status (:meth:`last_recovery_failure`).
        """
        with self._lock:
            key = (register_id, self._open.get(register_id))
        known = self._known_reasons(conn, key)
        with self._lock:
            self._last_reason[key] = reason
            self._pending_reasons.append(key)
            if reason in known:
                return
            known.append(reason)
        append_event(
            conn,
            kind="outage.recovery_failed",
            register_id=register_id,
            at=at.isoformat(),
            data={"outage": key[1], "reason": reason},
        )
        with self._lock:
            self._news.append(
                (
                    logging.WARNING,
                    "register %s: the unit answered its probe but recovery failed (outage %s):"
                    " %s; everything keeps waiting for the unit",
                    (register_id, "-" if key[1] is None else key[1], reason),
                )
            )

    def last_recovery_failure(self, conn: sqlite3.Connection, outage: OutageRecord) -> str | None:
        """Why the last recovery of the open ``outage`` failed after its unit answered."""
        key = (outage.register_id, outage.id)
        self._known_reasons(conn, key)
        with self._lock:
            return self._last_reason.get(key)

    def _known_reasons(self, conn: sqlite3.Connection, key: _Key) -> list[str]:
        """The reasons journaled for ``key``, loaded from the journal once per process."""
        with self._lock:
            known = self._reasons.get(key)
        if known is not None:
            return known
        loaded = [] if key[1] is None else _journaled_reasons(conn, key[0], key[1])
        with self._lock:
            known = self._reasons.setdefault(key, loaded)
            if loaded:
                self._last_reason.setdefault(key, loaded[-1])
            return known

    def close(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        sammelbeleg_number: int,
        at: dt.datetime,
    ) -> int:
        """Close the open outage with its Sammelbeleg, in the Sammelbeleg's transaction."""
        return self._end(
            conn,
            register_id,
            at,
            {"sammelbeleg_number": sammelbeleg_number},
            lambda outage_id: _closed_line(conn, outage_id, register_id, sammelbeleg_number, at),
            self.watch.ended,
        )

    def decommissioned(
        self, conn: sqlite3.Connection, register_id: str, closing_number: int, at: dt.datetime
    ) -> int:
        """End the open outage with the Schlussbeleg ``closing_number``, which carries the
        failure marker, in its transaction: the register ends inside the outage, which no
        Sammelbeleg can close (``sammelbeleg_number`` stays null). Its FinanzOnline report
        falls due within a week (:meth:`OutageWatch.decommissioned`)."""
        return self._end(
            conn,
            register_id,
            at,
            {"sammelbeleg_number": None, "closing_number": closing_number},
            lambda outage_id: (
                logging.WARNING,
                "outage %d ended: register %s was decommissioned inside it, its"
                " Schlussbeleg %d carries the failure marker (no Sammelbeleg follows)",
                (outage_id, register_id, closing_number),
            ),
            self.watch.decommissioned,
        )

    def _end(  # noqa: PLR0917 - the outage's end, then what it says and what follows
        self,
        conn: sqlite3.Connection,
        register_id: str,
        at: dt.datetime,
        facts: dict[str, int | None],
        line: Callable[[int], LogLine],
        then: Callable[[sqlite3.Connection, int, dt.datetime], list[Escalation]],
    ) -> int:
        """End the register's open outage at ``at`` in the caller's transaction: aged first,
        its row and ``outage.closed`` event (with ``facts``), then ``then``'s escalations;
        ``line``: what the log says once the transaction commits."""
        outage_id = self._id(register_id)
        escalations = self.watch.age_for_close(conn, outage_id, at)
        conn.execute(
            "UPDATE outages SET ended_at = ?, sammelbeleg_number = ? WHERE id = ?",
            (at.isoformat(), facts["sammelbeleg_number"], outage_id),
        )
        news = line(outage_id)
        append_event(
            conn,
            kind="outage.closed",
            register_id=register_id,
            at=at.isoformat(),
            data={"outage": outage_id, **facts},
        )
        escalations += then(conn, outage_id, at)
        with self._lock:
            del self._open[register_id]
            self._pending.append(("close", register_id, outage_id))
            self._escalations.extend(escalations)
            self._news.append(news)
        return outage_id

    def _id(self, register_id: str) -> int:
        with self._lock:
            return self._open[register_id]


def _journaled_reasons(conn: sqlite3.Connection, register_id: str, outage_id: int) -> list[str]:
    """The distinct recovery failures journaled for an outage, oldest first; the journal is
    read only from the event of the receipt that opened it (seq is the primary key)."""
    row = conn.execute(
        "SELECT r.journal_seq FROM outages o JOIN receipts r ON r.register_id = o.register_id"
        " AND r.number = o.first_number WHERE o.id = ?",
        (outage_id,),
    ).fetchone()
    rows = conn.execute(
        "SELECT data FROM journal WHERE seq >= ? AND kind = 'outage.recovery_failed'"
        " AND register_id = ? ORDER BY seq",
        (0 if row is None else row[0], register_id),
    )
    reasons: list[str] = []
    for (data,) in rows:
        event = json.loads(data)
        if event.get("outage") == outage_id and event["reason"] not in reasons:
            reasons.append(str(event["reason"]))
    return reasons


def _closed_line(
    conn: sqlite3.Connection, outage_id: int, register_id: str, number: int, at: dt.datetime
) -> LogLine:
    """The log line of a closed outage: its Sammelbeleg, duration and affected receipts
    (WARNING past the 48-hour window: the ``end-report`` line that follows says by when its
    end must be reported; none follows for the development unit's)."""
    unit_id, started_at, affected, escalations = conn.execute(
        "SELECT unit_id, started_at, affected, escalations FROM outages WHERE id = ?",
        (outage_id,),
    ).fetchone()
    signer = conn.execute(
        "SELECT unit_id FROM receipts WHERE register_id = ? AND number = ?",
        (register_id, number),
    ).fetchone()
    lasted = dt.timedelta(
        seconds=round((at - dt.datetime.fromisoformat(started_at)).total_seconds())
    )
    if signer is None or signer[0] == unit_id:
        message = "outage %d closed: register %s, unit %s signs again;"
        units: tuple[object, ...] = (unit_id,)
    else:  # the register was switched to another unit (unit switch) during the outage
        message = "outage %d closed: register %s, unit %s (which replaced unit %s) signed;"
        units = (signer[0], unit_id)
    message += " Sammelbeleg %d after %s (h:mm:ss), %d receipt%s affected"
    args: tuple[object, ...] = (
        outage_id,
        register_id,
        *units,
        number,
        lasted,
        affected,
        "" if affected == 1 else "s",
    )
    if "exceeded" not in json.loads(escalations):
        return logging.INFO, message, args
    return logging.WARNING, message + "; it lasted past 48 h", args


def load_outages(conn: sqlite3.Connection, register_id: str | None = None) -> list[OutageRecord]:
    """All outages (of one register, if given), newest first."""
    sql = f"SELECT {_COLUMNS} FROM outages"  # noqa: S608 - constant column list
    params: tuple[Any, ...] = ()
    if register_id is not None:
        sql, params = sql + " WHERE register_id = ?", (register_id,)
    development = development_units(conn)
    rows = conn.execute(sql + " ORDER BY id DESC", params)
    return [OutageRecord.from_row(r, development) for r in rows]


def load_outage(conn: sqlite3.Connection, outage_id: int) -> OutageRecord | None:
    """One outage by id, or ``None``."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM outages WHERE id = ?",  # noqa: S608 - constant column list
        (outage_id,),
    ).fetchone()
    return None if row is None else OutageRecord.from_row(row, development_units(conn))

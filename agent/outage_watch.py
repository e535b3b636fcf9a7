"""The 48-hour window: a timer that ages every open outage even when no receipt arrives.

Age is measured on the boot clock while the agent runs (:meth:`Clock.boottime`: it counts
the time the machine was suspended, and a wall-clock jump is detected, journaled, and
neither fakes nor swallows an escalation) and on the wall clock only for the time the
agent was not running. Levels, each journaled once per outage:

* ``opened``: the outage exists (operators are told at once);
* ``24h``: a day has passed;
* ``approaching``: 44 h, the 48-hour window is about to close;
* ``exceeded``: 48 h, not a temporary outage any more: the FinanzOnline report is due
  within one week of that moment (the date is recorded);
* ``overdue``: the week is over and no report was acknowledged (``outage report``).

An outage is aged once more as its Sammelbeleg closes it (:meth:`OutageWatch.age_for_close`),
so one that lasted past 48 h is flagged even if no tick saw it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from dataclasses import dataclass

from agent.clock import Clock
from agent.errors import InvalidSale, NotFound
from storage.journal import append_event
from storage.writer import WriteConnection

__all__ = ["Escalation", "OutageWatch", "Thresholds", "acknowledge_report", "log_escalation"]

HOUR = 3600.0
_OPEN_OUTAGES = (
    "SELECT id, register_id, age_seconds, checked_at, escalations, report_due,"
    " report_reference FROM outages WHERE ended_at IS NULL"
)

Escalation = tuple[int, str, str, float, str | None]  # outage, register, level, age s, due

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When each level fires, in hours of outage age (configurable)."""

    warn_hours: float = 24.0
    approaching_hours: float = 44.0
    exceeded_hours: float = 48.0
    report_days: float = 7.0
    jump_tolerance_s: float = 120.0

    def levels(self) -> tuple[tuple[str, float], ...]:
        return (
            ("opened", 0.0),
            ("24h", self.warn_hours * HOUR),
            ("approaching", self.approaching_hours * HOUR),
            ("exceeded", self.exceeded_hours * HOUR),
        )


class OutageWatch:
    """Ages open outages and journals escalations; call :meth:`tick` on a timer."""

    def __init__(
        self, writer: WriteConnection | None, clock: Clock, thresholds: Thresholds | None = None
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.thresholds = thresholds or Thresholds()
        self._seen: dict[int, tuple[float, dt.datetime]] = {}  # outage -> (boot, wall)

    def tick(self) -> list[tuple[int, str]]:
        """Update every open outage; return the (outage, level) escalations fired now.

        Each escalation past the opening is logged once its transaction has committed.
        """
        if self.writer is None:
            raise RuntimeError("this OutageWatch has no writer: it only ages closing outages")
        fired: list[Escalation] = []
        with self.writer.transaction() as conn:
            rows = conn.execute(_OPEN_OUTAGES).fetchall()
            for row in rows:
                fired.extend(self._age(conn, row, self.clock.now()))
        for escalation in fired:
            log_escalation(*escalation)
        return [(outage_id, level) for outage_id, _, level, _, _ in fired]

    def age_for_close(
        self, conn: sqlite3.Connection, outage_id: int, at: dt.datetime
    ) -> list[Escalation]:
        """Age the open outage ``outage_id`` at ``at`` in the caller's transaction (the one of
        its Sammelbeleg), journaling what a tick would: an outage past 48 h that closes before
        the timer saw it is still flagged and gets its report date. Log the returned
        escalations (:func:`log_escalation`) once that transaction has committed."""
        row = conn.execute(f"{_OPEN_OUTAGES} AND id = ?", (outage_id,)).fetchone()
        return [] if row is None else self._age(conn, row, at, closing=True)

    def _age(
        self, conn: sqlite3.Connection, row: sqlite3.Row, wall: dt.datetime, closing: bool = False
    ) -> list[Escalation]:
        """Age one open outage and journal its new levels; at its close only the ones with
        a legal consequence (exceeded, overdue): a warning about an outage that is over
        warns nobody."""
        outage_id, register_id = int(row[0]), str(row[1])
        boot = self.clock.boottime()
        elapsed = self._elapsed(conn, outage_id, register_id, row[3], boot=boot, wall=wall)
        self._seen[outage_id] = (boot, wall)
        age = float(row[2]) + elapsed
        sent = list(json.loads(row[4]))
        due = row[5]
        new = [lvl for lvl, at in self.thresholds.levels() if age >= at and lvl not in sent]
        if closing:
            new = [lvl for lvl in new if lvl == "exceeded"]
        if "exceeded" in new:  # a week from the moment it was past the window, not from now
            past = wall - dt.timedelta(seconds=age - self.thresholds.exceeded_hours * HOUR)
            due = (past + dt.timedelta(days=self.thresholds.report_days)).isoformat()
        if due is not None and row[6] is None and "overdue" not in sent:
            overdue_at = (self.thresholds.exceeded_hours + self.thresholds.report_days * 24) * HOUR
            if age >= overdue_at:
                new.append("overdue")
        for level in new:
            append_event(
                conn,
                kind="outage.escalation",
                register_id=register_id,
                at=wall.isoformat(),
                data={
                    "outage": outage_id,
                    "level": level,
                    "age_hours": round(age / HOUR, 3),
                    "report_due": due,
                },
            )
        conn.execute(
            "UPDATE outages SET age_seconds = ?, checked_at = ?, escalations = ?, report_due = ?"
            " WHERE id = ?",
            (age, wall.isoformat(), json.dumps(sent + new), due, outage_id),
        )
        return [(outage_id, register_id, level, age, due) for level in new]

    def _elapsed(
        self,
        conn: sqlite3.Connection,
        outage_id: int,
        register_id: str,
        checked_at: str,
        *,
        boot: float,
        wall: dt.datetime,
    ) -> float:
        previous = self._seen.get(outage_id)
        if previous is None:
            # first look in this process: the time we were not running, by the wall clock
            gap = (wall - dt.datetime.fromisoformat(checked_at)).total_seconds()
            if gap < 0:
                self._jump(conn, register_id, gap, "since the last check (before a restart)", wall)
            return max(0.0, gap)
        # suspend moves the wall and the boot clock alike: only a change of the wall clock
        # itself (NTP, a wrong RTC, an operator) is a jump
        d_boot, d_wall = boot - previous[0], (wall - previous[1]).total_seconds()
        if abs(d_wall - d_boot) > self.thresholds.jump_tolerance_s:
            self._jump(conn, register_id, d_wall - d_boot, "while running", wall)
        return d_boot

    def _jump(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        delta: float,
        when: str,
        wall: dt.datetime,
    ) -> None:
        append_event(
            conn,
            kind="clock.jump",
            register_id=register_id,
            at=wall.isoformat(),
            data={"delta_seconds": round(delta, 3), "when": when},
        )


# the log line of each escalation ("opened" is logged by the outage book at its commit)
_ESCALATIONS = {
    "24h": (logging.WARNING, "the signature unit still fails"),
    "approaching": (
        logging.WARNING,
        "the 48-hour window is about to close (the Sammelbeleg closes the outage once the"
        " unit signs again)",
    ),
    "exceeded": (
        logging.ERROR,
        "that is past the 48-hour window, report it in FinanzOnline by {due}"
        " (then: till-agent outage report {id} --reference ...)",
    ),
    "overdue": (
        logging.ERROR,
        "its FinanzOnline report was due by {due} and none is recorded, it is overdue"
        " (till-agent outage report {id} --reference ...)",
    ),
}


def log_escalation(
    outage_id: int, register_id: str, level: str, age: float, due: str | None
) -> None:
    """Log one escalation (call it once its transaction has committed)."""
    if level in _ESCALATIONS:
        severity, what = _ESCALATIONS[level]
        text = what.format(due=(due or "?")[:10], id=outage_id)
        log.log(
            severity,
            "outage %d of register %s has lasted %.1f h: %s",
            outage_id,
            register_id,
            age / HOUR,
            text,
        )


def acknowledge_report(
    writer: WriteConnection, clock: Clock, outage_id: int, reference: str, *, end: bool = False
) -> None:
    """Record that the FinanzOnline outage report (or, with ``end``, the end report) was made.

    Each report is recorded once: a FinanzOnline reference is evidence and the journal is
    append-only. The same reference again is a harmless repeat (nothing is journaled).

    Raises:
        NotFound: no such outage.
        InvalidSale: an empty reference, an end report before the first report, or
            (rule ``already-reported``) another reference for a report already recorded.
    """
    if not reference.strip():
        raise InvalidSale("reference", "required", "give the FinanzOnline reference text")
    with writer.transaction() as conn:
        row = conn.execute(
            "SELECT register_id, report_reference, end_report_reference FROM outages WHERE id = ?",
            (outage_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no outage {outage_id}")
        if end and row[1] is None:
            raise InvalidSale("--end", "report-first", "record the outage report before its end")
        recorded = row[2] if end else row[1]
        if recorded == reference:
            return
        if recorded is not None:
            what = "end report" if end else "report"
            raise InvalidSale(
                "reference",
                "already-reported",
                f"outage {outage_id} already has the {what} reference {recorded!r}; a"
                " FinanzOnline reference is evidence and is recorded once",
            )
        column = "end_report_reference" if end else "report_reference"
        conn.execute(f"UPDATE outages SET {column} = ? WHERE id = ?", (reference, outage_id))  # noqa: S608
        append_event(
            conn,
            kind="outage.reported",
            register_id=row[0],
            at=clock.now().isoformat(),
            data={"outage": outage_id, "end": end, "reference": reference},
        )

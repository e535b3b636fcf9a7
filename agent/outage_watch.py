"""The 48-hour window: a timer that ages every open outage even when no receipt arrives.

Age is measured on the boot clock while the agent runs (:meth:`Clock.boottime`: it counts
the time the machine was suspended, and a wall-clock jump is detected, journaled, and
neither fakes nor swallows an escalation) and on the wall clock only for the time the
agent was not running. That off-time of an outage found open at the start is measured by a
clock that may be behind (a till without a battery-backed clock boots at its shutdown time
until NTP corrects it): a forward jump of the wall clock seen later in the same process
shows it was, and is added to the age of those outages (the jumps back and forth on
balance, their highest sum; never subtracted: a 48-hour window errs on the long side). The
``clock.jump`` event says what it added to which outage (``outages_aged``), also when the
Sammelbeleg closes the outage before a tick saw the jump. An outage opened in this process
ages by the boot clock only, and no jump changes its age. Levels, each journaled once per
outage:

* ``opened``: the outage exists (operators are told at once);
* ``24h``: a day has passed;
* ``approaching``: 44 h, the 48-hour window is about to close;
* ``exceeded``: 48 h, not a temporary outage any more: the FinanzOnline report is due
  within one week of that moment (the date is recorded);
* ``overdue``: the week is over and no report was acknowledged (``outage report``).

An outage is aged once more as its Sammelbeleg closes it (:meth:`OutageWatch.age_for_close`),
so one that lasted past 48 h is flagged even if no tick saw it. The end of such an outage
(Wiederinbetriebnahme) must be reported too, within one week of it
(:meth:`OutageWatch.ended`): two more levels, for the end report:

* ``end-report``: the outage ended past 48 h; its end report is due a week after the end
  (the date is recorded, ``end_report_due``);
* ``end-overdue``: that week is over and no end report was acknowledged
  (``outage report --end``).

A register decommissioned inside its outage (a Schlussbeleg with the failure marker,
``special closing --failed-ok``) ends it without a Sammelbeleg (:meth:`OutageWatch.decommissioned`):

* ``decommissioned``: the failure is no temporary one, whatever its age: its report is due
  within a week (unless ``exceeded`` set an earlier date); ``overdue`` follows as above.
  A report recorded already (``outage report``) is not asked for again. No end report is
  owed: the register's decommissioning report (its ``closing`` obligation) takes its place.

An outage of a development unit (one signing under the fictitious AT100:
:func:`~agent.checks.development_units`, the test the checks use) owes none of these
reports: a development register is not registered in
FinanzOnline. It is aged, escalated and journaled as any other, but ``exceeded`` records
no due date (its line says, once, that a development register needs no report), and no
``overdue``, ``end-report`` or ``end-overdue`` follows; a due date an earlier version
recorded for one is not reminded of.

An outage that has ended is watched for as long as one of its reports is due and not
acknowledged: a tick journals its ``overdue`` and ``end-overdue`` when the wall clock has
passed the due date (a deadline in the calendar, as a Belegcheck's; the outage no longer
ages), and writes nothing for it otherwise.

Every tick also watches the wall clock, whether or not an outage is open: a jump beyond
the tolerance is journaled (``clock.jump``, one event per register) and logged (WARNING),
and a register whose last receipt date is ahead of the clock (receipts keep that date
until the clock catches up, rksv.md 7.1) is logged once (WARNING) and again (INFO) when
the clock has caught up. That costs one query per tick, nothing on the receipt path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from agent.checks import DEVELOPMENT_UNITS, development_units, development_zda
from agent.clock import Clock
from agent.contract import check_reference
from agent.errors import InvalidSale, NotFound
from storage.journal import append_event
from storage.writer import WriteConnection

__all__ = [
    "Escalation",
    "LogLine",
    "OutageWatch",
    "Thresholds",
    "acknowledge_report",
    "log_escalation",
    "shown_due",
]

HOUR = 3600.0
# each ends with the register's time zone (due moments are shown to people in it) and the
# outage's unit (a development unit's owes no report)
_OPEN_OUTAGES = (
    "SELECT id, register_id, age_seconds, checked_at, escalations, report_due,"
    " report_reference, (SELECT timezone FROM registers WHERE registers.id = outages.register_id),"
    " unit_id FROM outages WHERE ended_at IS NULL"
)
# ended outages with a report due and not acknowledged (their reminders may be due), not
# a development unit's (the parameter: development_zda()): a due date an earlier version
# gave one
_ENDED_REPORTS_DUE = (
    "SELECT id, register_id, age_seconds, escalations, report_due, report_reference,"  # noqa: S608 - constant SQL
    " end_report_due, end_report_reference,"
    " (SELECT timezone FROM registers WHERE registers.id = outages.register_id), unit_id"
    f" FROM outages WHERE ended_at IS NOT NULL AND unit_id NOT IN {DEVELOPMENT_UNITS}"
    " AND ((report_due IS NOT NULL AND report_reference IS NULL)"
    " OR (end_report_due IS NOT NULL AND end_report_reference IS NULL))"
)

# outage, register, level, age s, due (ISO instant), the register's time zone, the unit,
# whether that is a development unit (its ``exceeded`` owes no report)
Escalation = tuple[int, str, str, float, str | None, str, str, bool]
LogLine = tuple[int, str, tuple[object, ...]]  # level, message, arguments
_Jump = tuple[float, dt.datetime]  # seconds the wall clock jumped, its time at the last tick

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


@dataclass(frozen=True, slots=True)
class _OffTime:
    """The time an outage found open at the start spent with the agent not running, as the
    wall clock measured it, and that clock's jumps since (it was behind by their sum)."""

    register_id: str
    gap: float  # the wall clock at the first look minus the outage's last check (may be < 0)
    lead: float = 0.0  # the jumps of the wall clock since that look, summed
    counted: float = 0.0  # the highest such sum yet: it is in the outage's age

    def follow(self, delta: float) -> tuple[_OffTime, float]:
        """After a jump of ``delta`` s: the new state and the seconds it adds to the age."""
        lead = self.lead + delta
        counted = max(self.counted, lead)
        added = max(0.0, self.gap + counted) - max(0.0, self.gap + self.counted)
        return dataclasses.replace(self, lead=lead, counted=counted), added


@dataclass(slots=True)
class _Memory:
    """What the watch remembers from tick to tick. A tick works on a copy, which the watch
    takes once the tick's writes are committed: a tick rolled back (a full disk) leaves it
    as the last committed tick left it, so the next one ages the outages from there."""

    last: tuple[float, dt.datetime] | None = None  # (boot, wall) of the last tick
    offtime: dict[int, _OffTime] = field(default_factory=dict)  # found ones, once aged here
    noted: dict[str, int] = field(default_factory=dict)  # register -> a close's clock.jump
    # outage -> (boot, wall) when it was last aged
    seen: dict[int, tuple[float, dt.datetime]] = field(default_factory=dict)

    def copy(self) -> _Memory:
        return _Memory(self.last, dict(self.offtime), dict(self.noted), dict(self.seen))


class OutageWatch:
    """Ages open outages and journals escalations; call :meth:`tick` on a timer."""

    def __init__(
        self, writer: WriteConnection, clock: Clock, thresholds: Thresholds | None = None
    ) -> None:
        self.writer = writer
        self.clock = clock
        self.thresholds = thresholds or Thresholds()
        with writer.transaction() as conn:  # what a process before us left open (a read)
            rows = conn.execute("SELECT id FROM outages WHERE ended_at IS NULL").fetchall()
        self._found = frozenset(int(r[0]) for r in rows)
        self._memory = _Memory()
        self._clamped: set[str] = set()  # registers whose dates are ahead of the clock
        # the boot clock at the last tick that finished: every outage open then was aged
        # (and is in _memory.seen), so one first seen later opened in this process after it
        self._ticked_boot: float | None = None
        # before the first tick, an outage not found open opened after this moment
        self._started_boot = clock.boottime()

    def tick(self) -> list[tuple[int, str]]:
        """Update every open outage and remind of the due reports of ended ones; return the
        (outage, level) escalations fired now.

        Each escalation past the opening is logged once its transaction has committed, and
        what the watch remembers changes only then (a rolled-back tick loses no age).
        """
        fired: list[Escalation] = []
        with self.writer.transaction() as conn:
            memory = self._memory.copy()  # this tick's, the watch's once committed
            wall = self.clock.now()
            registers = conn.execute(
                "SELECT id, last_issued_at, timezone FROM registers ORDER BY id"
            ).fetchall()
            rows = conn.execute(_OPEN_OUTAGES).fetchall()
            jump = self._jump_since_last(memory, wall)
            delta = None if jump is None else jump[0]
            added = self._follow(memory, delta, [int(r[0]) for r in rows])
            ids = [str(r[0]) for r in registers]
            lines = self._watch_clock(conn, memory, ids, wall, jump, added)
            for row in rows:
                aged = added.get(int(row[0]), 0.0)
                jumped = jump is not None  # journaled: its outages' gaps need not be
                fired.extend(self._age(conn, memory, row, wall, jumped=jumped, added=aged))
            for row in conn.execute(_ENDED_REPORTS_DUE, (development_zda(),)).fetchall():
                fired.extend(self._remind_ended(conn, row, wall))
            # committed here, still holding the writer: no Sammelbeleg's close comes between
            self.writer.commit_so_far()
            self._memory = memory
            self._ticked_boot = None if memory.last is None else memory.last[0]
        lines.extend(self._clamping(registers, wall))
        for level, message, args in lines:
            log.log(level, message, *args)
        for escalation in fired:
            log_escalation(*escalation)
        return [(outage_id, level) for outage_id, _, level, *_ in fired]

    def _jump_since_last(self, memory: _Memory, wall: dt.datetime) -> _Jump | None:
        """The jump of the wall clock since the last tick beyond the tolerance (not suspend:
        that moves the boot clock alike), or None; this tick becomes the last."""
        boot, last = self.clock.boottime(), memory.last
        memory.last = (boot, wall)
        delta = None if last is None else self._delta(last, boot, wall)
        return None if delta is None or last is None else (delta, last[1])

    def _delta(
        self, last: tuple[float, dt.datetime], boot: float, wall: dt.datetime
    ) -> float | None:
        delta = (wall - last[1]).total_seconds() - (boot - last[0])
        return None if abs(delta) <= self.thresholds.jump_tolerance_s else delta

    def _follow(
        self, memory: _Memory, delta: float | None, open_ids: Iterable[int]
    ) -> dict[int, float]:
        """Follow a jump in the off-time of each open outage found at the start; return the
        seconds it adds to each one's age (a forward jump shows that the wall clock, which
        measured that off-time, was behind)."""
        open_now = set(open_ids)
        for gone in memory.offtime.keys() - open_now:  # closed by another process
            del memory.offtime[gone]
        added: dict[int, float] = {}
        if delta is None:
            return added
        for outage_id, offtime in list(memory.offtime.items()):
            memory.offtime[outage_id], seconds = offtime.follow(delta)
            if seconds > 0:
                added[outage_id] = seconds
        return added

    def _watch_clock(  # noqa: PLR0917 - one tick's facts
        self,
        conn: sqlite3.Connection,
        memory: _Memory,
        registers: list[str],
        wall: dt.datetime,
        jump: _Jump | None,
        added: dict[int, float],
    ) -> list[LogLine]:
        """Journal a jump of the wall clock since the last tick, one event per register (with
        what it added to the age of the register's outages); return its log lines."""
        noted, memory.noted = memory.noted, {}
        if jump is None:
            return []
        delta, before = jump
        targets: list[str | None] = [*registers] or [None]  # a till without registers yet
        for register_id in targets:
            if register_id in noted and _journaled(conn, noted[register_id], register_id):
                continue  # the Sammelbeleg's close journaled this jump already
            aged = {o: s for o, s in added.items() if memory.offtime[o].register_id == register_id}
            self._jump(conn, register_id, delta, "while running", wall, aged=aged)
        lines: list[LogLine] = [
            (
                logging.WARNING,
                "the wall clock jumped %+.0f s (%s to %s); outage ages follow the boot clock,"
                " receipt dates the wall clock (never going back within a register)",
                (delta, before.isoformat(), wall.isoformat()),
            )
        ]
        lines.extend(
            (
                logging.WARNING,
                "outage %d: the wall clock that measured its time before this start was behind:"
                " %.0f s added to its age",
                (outage_id, seconds),
            )
            for outage_id, seconds in added.items()
        )
        return lines

    def _clamping(self, registers: list[sqlite3.Row], wall: dt.datetime) -> list[LogLine]:
        """Log once when a register's last receipt date is ahead of the clock (its receipts
        keep that date), and once when the clock has caught up.

        Instants are compared, not local times: in the hour the October fall-back repeats,
        a receipt date is read as its first pass (``fold=0``, the earlier instant), so the
        second pass is no clock behind."""
        lines: list[LogLine] = []
        for register_id, last_issued_at, timezone in registers:
            zone = ZoneInfo(timezone)
            local = wall.astimezone(zone).replace(tzinfo=None, microsecond=0)
            ahead = (
                last_issued_at is not None
                and (
                    dt.datetime.fromisoformat(last_issued_at).replace(tzinfo=zone, fold=0) - wall
                ).total_seconds()
                > self.thresholds.jump_tolerance_s
            )
            if ahead and register_id not in self._clamped:
                self._clamped.add(register_id)
                lines.append(
                    (
                        logging.WARNING,
                        "register %s: the clock (%s) is behind its last receipt date (%s):"
                        " receipts keep that date until the clock catches up (dates never go"
                        " back within a register)",
                        (register_id, local.isoformat(), last_issued_at),
                    )
                )
            elif not ahead and register_id in self._clamped:
                self._clamped.discard(register_id)
                lines.append(
                    (
                        logging.INFO,
                        "register %s: the clock (%s) has caught up with its receipt dates",
                        (register_id, local.isoformat()),
                    )
                )
        return lines

    def age_for_close(
        self, conn: sqlite3.Connection, outage_id: int, at: dt.datetime
    ) -> list[Escalation]:
        """Age the open outage ``outage_id`` at ``at`` in the caller's transaction (the one of
        its Sammelbeleg), journaling what a tick would: an outage past 48 h that closes before
        the timer saw it is still flagged and gets its report date. Log the returned
        escalations (:func:`log_escalation`) once that transaction has committed."""
        row = conn.execute(f"{_OPEN_OUTAGES} AND id = ?", (outage_id,)).fetchone()
        if row is None:
            return []
        added = self._jump_before_close(conn, outage_id)
        # the caller's transaction: what the watch remembers changes in it (a rollback
        # of the Sammelbeleg leaves the outage open, aged again by the next tick)
        return self._age(conn, self._memory, row, at, closing=True, jumped=False, added=added)

    def _jump_before_close(self, conn: sqlite3.Connection, outage_id: int) -> float:
        """A jump of the wall clock since the last tick that adds to the age of the closing
        outage (found open at the start, see :meth:`_follow`): journaled now for its register
        (the next tick does not repeat it there), and the seconds it adds returned. Nothing in
        the watch changes before the transaction commits but the note of that event."""
        offtime, last = self._memory.offtime.get(outage_id), self._memory.last
        if offtime is None or last is None:
            return 0.0
        wall = self.clock.now()
        delta = self._delta(last, self.clock.boottime(), wall)
        added = 0.0 if delta is None else offtime.follow(delta)[1]
        if delta is None or added <= 0:
            return 0.0
        aged = {outage_id: added}
        seq = self._jump(conn, offtime.register_id, delta, "before the close", wall, aged=aged)
        self._memory.noted[offtime.register_id] = seq
        return added

    def ended(self, conn: sqlite3.Connection, outage_id: int, at: dt.datetime) -> list[Escalation]:
        """The outage ``outage_id`` has just ended at ``at``, in the caller's transaction
        (the Sammelbeleg's, after :meth:`age_for_close`): if it lasted past 48 h, record
        that its end must be reported within a week (``end_report_due``) and journal the
        ``end-report`` level; not for a development unit's. Log the returned escalations
        (:func:`log_escalation`) once that transaction has committed."""
        self._memory.seen.pop(outage_id, None)
        self._memory.offtime.pop(outage_id, None)
        due = (at + dt.timedelta(days=self.thresholds.report_days)).isoformat()
        zda = development_zda()
        cursor = conn.execute(
            "UPDATE outages SET end_report_due = ? WHERE id = ? AND end_report_due IS NULL"  # noqa: S608 - constant SQL
            f" AND unit_id NOT IN {DEVELOPMENT_UNITS}"
            " AND EXISTS (SELECT 1 FROM json_each(escalations) WHERE value = 'exceeded')",
            (due, outage_id, zda),
        )
        if cursor.rowcount == 0:
            return []
        row = conn.execute(f"{_ENDED_REPORTS_DUE} AND id = ?", (zda, outage_id)).fetchone()
        return [] if row is None else self._remind_ended(conn, row, at)

    def decommissioned(
        self, conn: sqlite3.Connection, outage_id: int, at: dt.datetime
    ) -> list[Escalation]:
        """The register of the outage ``outage_id`` was decommissioned inside it at ``at``,
        in the caller's transaction (its Schlussbeleg's, after :meth:`age_for_close`): no
        Sammelbeleg and no Wiederinbetriebnahme follow, so the failure is no temporary one
        whatever its age. Its FinanzOnline report is due within a week (``report_due``,
        unless an earlier date stands: past 48 h), journaled as the ``decommissioned``
        level; no end report is owed: the decommissioning is reported instead (the
        Schlussbeleg's ``closing`` obligation, :mod:`agent.checks`). A report recorded
        already (``outage report``, past 48 h) is not asked for again: the log says it is
        recorded. Nothing for a development unit's. Log the returned escalations once that
        transaction has committed."""
        self._memory.seen.pop(outage_id, None)
        self._memory.offtime.pop(outage_id, None)
        register_id, age, sent, due, timezone, unit_id, reference = conn.execute(
            "SELECT register_id, age_seconds, escalations, report_due,"
            " (SELECT timezone FROM registers WHERE registers.id = outages.register_id),"
            " unit_id, report_reference FROM outages WHERE id = ?",
            (outage_id,),
        ).fetchone()
        if unit_id in development_units(conn):
            return []
        due = due or (at + dt.timedelta(days=self.thresholds.report_days)).isoformat()
        levels = [*json.loads(sent), "decommissioned"]
        _journal_levels(
            conn, register_id, outage_id, ["decommissioned"], age, at, {"report_due": due}
        )
        conn.execute(
            "UPDATE outages SET report_due = ?, escalations = ? WHERE id = ?",
            (due, json.dumps(levels), outage_id),
        )
        shown = "decommissioned" if reference is None else _DECOMMISSIONED_REPORTED
        return [(outage_id, register_id, shown, age, due, timezone, unit_id, False)]

    def _remind_ended(
        self, conn: sqlite3.Connection, row: sqlite3.Row, wall: dt.datetime
    ) -> list[Escalation]:
        """Journal the reminders of an ended outage's reports that are due by ``wall`` and
        not sent yet: its end report (``end-report``), then each report not acknowledged by
        its due date (``overdue``, ``end-overdue``). Nothing new: nothing written."""
        outage_id, register_id, age = int(row[0]), str(row[1]), float(row[2])
        sent = list(json.loads(row[3]))
        reports = (("overdue", None, row[4], row[5]), ("end-overdue", "end-report", row[6], row[7]))
        new: list[tuple[str, str]] = []
        for overdue, announced, due, reference in reports:
            if due is None or reference is not None:
                continue
            if announced is not None and announced not in sent:
                new.append((announced, due))
            if overdue not in sent and wall >= dt.datetime.fromisoformat(due):
                new.append((overdue, due))
        dues = {"report_due": row[4], "end_report_due": row[6]}
        _journal_levels(conn, register_id, outage_id, [lvl for lvl, _ in new], age, wall, dues)
        if new:
            levels = sent + [level for level, _ in new]
            conn.execute(
                "UPDATE outages SET escalations = ? WHERE id = ?", (json.dumps(levels), outage_id)
            )
        # a development unit's is not among the ended outages with reports due
        return [
            (outage_id, register_id, level, age, due, row[8], row[9], False) for level, due in new
        ]

    def _age(
        self,
        conn: sqlite3.Connection,
        memory: _Memory,
        row: sqlite3.Row,
        wall: dt.datetime,
        *,
        closing: bool = False,
        jumped: bool,
        added: float = 0.0,
    ) -> list[Escalation]:
        """Age one open outage (by ``added`` s more for a wall clock found behind, see
        :meth:`_follow`) and journal its new levels; at its close only the ones with a legal
        consequence (exceeded, overdue): a warning about an outage that is over warns
        nobody. A development unit's owes no report (see :meth:`_report_due`)."""
        outage_id, register_id = int(row[0]), str(row[1])
        boot = self.clock.boottime()
        elapsed = self._elapsed(
            conn, memory, outage_id, register_id, row[3], boot=boot, wall=wall, jumped=jumped
        )
        memory.seen[outage_id] = (boot, wall)
        age = float(row[2]) + elapsed + added
        sent = list(json.loads(row[4]))
        due = row[5]
        new = [lvl for lvl, at in self.thresholds.levels() if age >= at and lvl not in sent]
        if closing:
            new = [lvl for lvl in new if lvl == "exceeded"]
        development = row[8] in development_units(conn)
        if not development:  # a development register owes FinanzOnline nothing
            due = self._report_due(new, sent, age, wall, due, reported=row[6] is not None)
        _journal_levels(conn, register_id, outage_id, new, age, wall, {"report_due": due})
        conn.execute(
            "UPDATE outages SET age_seconds = ?, checked_at = ?, escalations = ?, report_due = ?"
            " WHERE id = ?",
            (age, wall.isoformat(), json.dumps(sent + new), due, outage_id),
        )
        return [
            (outage_id, register_id, level, age, due, row[7], row[8], development) for level in new
        ]

    def _report_due(
        self,
        new: list[str],
        sent: list[str],
        age: float,
        wall: dt.datetime,
        due: str | None,
        *,
        reported: bool,
    ) -> str | None:
        """The moment the outage's FinanzOnline report is due (``due``, or set as ``exceeded``
        is in ``new``); ``overdue`` is added to ``new`` once that week is over and no report
        is ``reported``."""
        if "exceeded" in new:  # a week from the moment it was past the window, not from now
            past = wall - dt.timedelta(seconds=age - self.thresholds.exceeded_hours * HOUR)
            due = (past + dt.timedelta(days=self.thresholds.report_days)).isoformat()
        if due is not None and not reported and "overdue" not in sent:
            overdue_at = (self.thresholds.exceeded_hours + self.thresholds.report_days * 24) * HOUR
            if age >= overdue_at:
                new.append("overdue")
        return due

    def _elapsed(
        self,
        conn: sqlite3.Connection,
        memory: _Memory,
        outage_id: int,
        register_id: str,
        checked_at: str,
        *,
        boot: float,
        wall: dt.datetime,
        jumped: bool,
    ) -> float:
        """Seconds since this outage was last aged; a clock that went back since the last
        check is journaled here unless the tick already journaled it (``jumped``)."""
        previous = memory.seen.get(outage_id)
        if previous is None:
            # first look in this process: the time we were not running, by the wall clock
            gap = (wall - dt.datetime.fromisoformat(checked_at)).total_seconds()
            if gap < 0 and not jumped:
                self._jump(conn, register_id, gap, "since the last check (before a restart)", wall)
            if outage_id in self._found:  # a later jump may show this clock was behind
                memory.offtime[outage_id] = _OffTime(register_id, gap)
            else:
                # opened in this process after the last tick (or the start): no longer ago
                # than that, whatever the wall clock did meanwhile (a jump must not fake its
                # age, also not NTP's first step after the boot)
                since = self._started_boot if self._ticked_boot is None else self._ticked_boot
                gap = min(gap, boot - since)
            return max(0.0, gap)
        # a jump of the wall clock while running is journaled by the tick (_watch_clock)
        return boot - previous[0]

    def _jump(
        self,
        conn: sqlite3.Connection,
        register_id: str | None,
        delta: float,
        when: str,
        wall: dt.datetime,
        *,
        aged: dict[int, float] | None = None,
    ) -> int:
        """Journal a jump (and the seconds it added to the age of outages); return its seq."""
        data: dict[str, object] = {"delta_seconds": round(delta, 3), "when": when}
        if aged:
            data["outages_aged"] = [
                {"outage": outage_id, "added_seconds": round(seconds, 3)}
                for outage_id, seconds in sorted(aged.items())
            ]
        return append_event(
            conn, kind="clock.jump", register_id=register_id, at=wall.isoformat(), data=data
        )


def _journaled(conn: sqlite3.Connection, seq: int, register_id: str) -> bool:
    """Whether the clock.jump event ``seq`` of ``register_id`` is in the journal (committed)."""
    row = conn.execute(
        "SELECT 1 FROM journal WHERE seq = ? AND kind = 'clock.jump' AND register_id = ?",
        (seq, register_id),
    ).fetchone()
    return row is not None


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
    "decommissioned": (
        logging.ERROR,
        "the register was decommissioned inside it (its Schlussbeleg carries the failure"
        " marker; no Sammelbeleg follows), so it is no temporary failure: report it in"
        " FinanzOnline by {due} (then: till-agent outage report {id} --reference ...),"
        " and the decommissioning of the register (till-agent checks list)",
    ),
    # (logged only: the ``decommissioned`` level of an outage whose report is recorded)
    "decommissioned-reported": (
        logging.WARNING,
        "the register was decommissioned inside it (its Schlussbeleg carries the failure"
        " marker; no Sammelbeleg follows); its FinanzOnline report is recorded already"
        " (till-agent outage show {id}), the decommissioning of the register is reported"
        " as till-agent checks list says",
    ),
    "end-report": (
        logging.WARNING,
        "it ended past the 48-hour window, report its end (Wiederinbetriebnahme) in"
        " FinanzOnline by {due} (then: till-agent outage report {id} --end --reference ...)",
    ),
    "end-overdue": (
        logging.ERROR,
        "the FinanzOnline report of its end was due by {due} and none is recorded, it is"
        " overdue (till-agent outage report {id} --end --reference ...)",
    ),
}

_DECOMMISSIONED_REPORTED = "decommissioned-reported"

# ... and of ``exceeded`` for a development unit: a WARNING, as nothing is owed
_DEVELOPMENT_EXCEEDED = (
    logging.WARNING,
    "that is past the 48-hour window; {register} signs with the development unit {unit}:"
    " a development register needs no FinanzOnline report (none is recorded or reminded)",
)


def log_escalation(  # noqa: PLR0917 - one escalation's facts (an Escalation)
    outage_id: int,
    register_id: str,
    level: str,
    age: float,
    due: str | None,
    timezone: str,
    unit_id: str,
    development: bool,
) -> None:
    """Log one escalation (call it once its transaction has committed)."""
    if level == "exceeded" and development:
        severity, what = _DEVELOPMENT_EXCEEDED
    elif level in _ESCALATIONS:
        severity, what = _ESCALATIONS[level]
    else:
        return
    shown = "?" if due is None else shown_due(due, timezone)
    text = what.format(due=shown, id=outage_id, register=register_id, unit=unit_id)
    log.log(
        severity,
        "outage %d of register %s has lasted %.1f h: %s",
        outage_id,
        register_id,
        age / HOUR,
        text,
    )


def shown_due(due: str, timezone: str) -> str:
    """A report's due moment ``due`` (an ISO instant) as people read it: date and time in
    the register's time zone ``timezone``, e.g. ``2026-03-11 11:00 (Europe/Vienna)``.

    Not a date alone: ``overdue`` fires at that moment, and a UTC date would send the
    operator to FinanzOnline a day late. The seconds are cut off (an earlier minute).
    """
    at = dt.datetime.fromisoformat(due).astimezone(ZoneInfo(timezone))
    return f"{at:%Y-%m-%d %H:%M} ({timezone})"


def acknowledge_report(
    writer: WriteConnection, clock: Clock, outage_id: int, reference: str, *, end: bool = False
) -> None:
    """Record that the FinanzOnline outage report (or, with ``end``, the end report) was made.

    Each report is recorded once: a FinanzOnline reference is evidence and the journal is
    append-only. The same reference again is a harmless repeat (nothing is journaled).

    Raises:
        NotFound: no such outage.
        InvalidSale: a missing or bad reference (see
            :func:`~agent.contract.check_reference`), an end report before the first report
            or while the outage is still open (it ends with its signed Sammelbeleg), an end
            report of an outage its register's Schlussbeleg ended (rule ``decommissioned``:
            the unit never came back, the decommissioning report takes its place), or
            (rule ``already-reported``) another reference for a report already recorded.
    """
    check_reference(reference, "FinanzOnline")
    with writer.transaction() as conn:
        row = conn.execute(
            "SELECT register_id, report_reference, end_report_reference, ended_at,"
            " sammelbeleg_number FROM outages WHERE id = ?",
            (outage_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no outage {outage_id}")
        if end and row[3] is not None and row[4] is None:  # ended by a Schlussbeleg
            raise InvalidSale(
                "end",
                "decommissioned",
                f"outage {outage_id} ended with the Schlussbeleg of register {row[0]}, which"
                " was decommissioned inside it: the unit never came back, so there is no end"
                " (Wiederinbetriebnahme) to report; the decommissioning report takes its"
                f" place (till-agent checks done {row[0]} closing --reference ...)",
            )
        if end and row[1] is None:
            raise InvalidSale("end", "report-first", "record the outage report before its end")
        if end and row[3] is None:
            raise InvalidSale(
                "end",
                "outage-ended",
                f"outage {outage_id} is still open: its end (Wiederinbetriebnahme) is reported"
                " once its signed Sammelbeleg has closed it",
            )
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


def _journal_levels(  # noqa: PLR0917 - one escalation event's facts
    conn: sqlite3.Connection,
    register_id: str,
    outage_id: int,
    levels: list[str],
    age: float,
    wall: dt.datetime,
    dues: dict[str, str | None],
) -> None:
    """Journal an ``outage.escalation`` event for each of ``levels``, with the report due
    dates ``dues`` as they stand."""
    for level in levels:
        data = {"outage": outage_id, "level": level, "age_hours": round(age / HOUR, 3), **dues}
        append_event(
            conn, kind="outage.escalation", register_id=register_id, at=wall.isoformat(), data=data
        )

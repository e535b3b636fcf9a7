"""What the operator owes after three special receipts (rksv.md sections 5 and 6).

* ``start``: the signature unit and the register must be registered in FinanzOnline within
  one week of commissioning, and the Startbeleg checked with the BMF Belegcheck app (or
  web service) right after: due 7 days after the Startbeleg's date.
* ``yearly``: the Jahresbeleg (December's Monatsbeleg) must be checked with the Belegcheck
  app or web service by 15 February of the following year.
* ``closing``: the decommissioning of the register must be reported in FinanzOnline
  "ohne unnötigen Aufschub", within one week: due 7 days after the Schlussbeleg's date.
* ``unit``: a register switched to another signature unit (``till-agent unit switch``,
  :mod:`agent.unit_switch`): the new unit is registered in FinanzOnline within one week, as
  a new register's is, the failure for good of the unit it replaces is reported there, and
  a receipt the new unit signed is checked with the Belegcheck: due 7 days after the
  switch. Its receipt number is the first receipt after the switch.

An obligation is created in the transaction of the signed receipt that implies it (also
one issued late by recovery; a Jahresbeleg that waits for its unit implies nothing yet),
a ``unit`` one in the switch's, and journaled (``check.due``). A Schlussbeleg that
recovery stores as the chain service signed it (its answer was lost) is not issued again,
so the timer's next tick creates its obligation (:meth:`CheckWatch.tick`: a closed
register without one). Due dates are dates in the register's time zone: a check is
overdue from midnight after its due date there, whatever the UTC offset did meanwhile.

A timer (:meth:`CheckWatch.tick`, beside the outage watch) raises each reminder once per
obligation, as an ``alert.raised`` journal event and a log line: ``created`` (INFO),
``approaching`` two days before the due date (WARNING) and ``overdue`` (ERROR). The
reminders are sent by the timer and not at creation, so a till that was idle or off
catches up with every reminder it missed at its next tick; an obligation lasts days, so
the interval of the timer does not matter. The operator records the check (or the
report) with ``till-agent checks done`` (:func:`record_check`): once, with the Belegcheck
or FinanzOnline reference, and whether it failed (then again once the cause is fixed).

A receipt signed by a development unit implies nothing, nor a switch to one: a unit
whose stored identity signs under the fictitious provider AT100 (suite ``R1-AT100``,
rksv.md 1.2: the sample code's provider, which no certified unit has), such as
``dev-uncertified``, the self-signed key ``run`` creates, and the default of ``unit
create-software``. Such a register cannot be registered in FinanzOnline, nor its
receipts pass a Belegcheck. The test is the unit's
provider, not its id: a closed-system (AT0) or provider-certified unit owes every step
whatever it is called (:func:`development_units`). Its special
receipt logs one INFO line saying so instead, and an obligation an earlier version
recorded for one is neither listed nor reminded of.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo

from agent.clock import Clock
from agent.contract import check_reference
from agent.errors import InvalidSale, NotFound

if TYPE_CHECKING:  # the command line reads CheckKind from here: no SQLAlchemy on import
    from agent.outage_watch import LogLine
    from storage.db import TillDB
    from storage.writer import WriteConnection

__all__ = [
    "CHECK_KINDS",
    "DEVELOPMENT_UNITS",
    "CheckKind",
    "CheckRecord",
    "CheckWatch",
    "development_units",
    "development_zda",
    "due_date",
    "load_checks",
    "record_check",
    "record_due",
    "registered_unit",
    "replaced_unit",
    "withdraw_unit_check",
]

CheckKind = Literal["start", "yearly", "closing", "unit"]  # the table's CHECK (0004, 0007, 0011)
CHECK_KINDS: tuple[CheckKind, ...] = get_args(CheckKind)
START_DAYS = 7  # registration within one week of commissioning, the check right after
CLOSING_DAYS = 7  # the decommissioning is reported within one week of the Schlussbeleg
UNIT_DAYS = 7  # a new unit is registered within one week of the switch, as a new register's
WARN_DAYS = 2  # the WARNING reminder, this many days before the due date

log = logging.getLogger(__name__)

# a failed unit check that a later unit check of its receipt number passed: settled, the
# register no longer counts as "unit failed" by it (the same number's checks are few)
_SETTLED = (
    "c.kind = 'unit' AND c.failed AND EXISTS (SELECT 1 FROM checks s"
    " WHERE s.register_id = c.register_id AND s.kind = 'unit'"
    " AND s.receipt_number = c.receipt_number AND s.id > c.id"
    " AND s.done_at IS NOT NULL AND NOT s.failed)"
)
_COLUMNS = (
    "c.id, c.register_id, c.kind, c.year, c.receipt_number, c.due_date, c.created_at,"
    f" c.alerts, c.reference, c.failed, c.done_at, r.timezone, {_SETTLED}"
)
_FROM = " FROM checks c JOIN registers r ON r.id = c.register_id"
# the ids of the development units, its parameter :func:`development_zda`: the one test of
# a development register, in SQL (`x.unit_id NOT IN DEVELOPMENT_UNITS`) and in Python
# (:func:`development_units`); a unit's provider is pinned with its identity (units.zda)
DEVELOPMENT_UNITS = "(SELECT u.id FROM units u WHERE u.zda = ?)"
# not an obligation an earlier version recorded for a receipt of a development unit (the
# parameter: development_zda()), through the receipts' unique (register_id, number)
_OWED = (
    " AND NOT EXISTS (SELECT 1 FROM receipts x WHERE x.register_id = c.register_id"  # noqa: S608 - constant SQL
    f" AND x.number = c.receipt_number AND x.unit_id IN {DEVELOPMENT_UNITS})"
)
# the signed Start- and Jahresbelege of registers without any obligation of theirs (a unit
# switch's is not), for adoption; not a development unit's (the parameter:
# development_zda()), read at each start through ix_receipts_start_yearly (0009), whose
# WHERE the kind IN repeats
_UNTRACKED = (
    "SELECT x.register_id, x.kind, x.number, x.issued_at, x.document, r.timezone"  # noqa: S608 - constant SQL
    " FROM receipts x JOIN registers r ON r.id = x.register_id"
    " WHERE x.kind IN ('start', 'yearly') AND x.signature_state = 'signed'"
    f" AND x.unit_id NOT IN {DEVELOPMENT_UNITS}"
    " AND NOT EXISTS (SELECT 1 FROM checks c WHERE c.register_id = x.register_id"
    " AND c.kind != 'unit')"
    " ORDER BY x.register_id, x.number"
)
# the Schlussbeleg (the last receipt) of each closed register without its obligation, not
# a development unit's (the parameter: development_zda()), with the time it was stored
# (its journal event): few rows, read on every tick
_UNREPORTED_CLOSINGS = (
    "SELECT x.register_id, x.kind, x.number, x.issued_at, x.document, r.timezone, j.at"  # noqa: S608 - constant SQL
    " FROM registers r JOIN receipts x ON x.register_id = r.id AND x.number = r.last_number"
    " JOIN journal j ON j.seq = x.journal_seq"
    " WHERE r.state = 'closed' AND x.kind = 'closing' AND x.signature_state = 'signed'"
    f" AND x.unit_id NOT IN {DEVELOPMENT_UNITS}"
    " AND NOT EXISTS (SELECT 1 FROM checks c WHERE c.register_id = r.id AND c.kind = 'closing')"
    " ORDER BY r.id"
)


# the latest recorded unit check of each receipt number whose unit (registered_unit) is not
# the unit of that number (its receipt, or with none yet the active unit), with no open
# check of the number: a till of 0011 switched away from it at that number and dropped the
# check the switch owed (one unit check per receipt number); not to a development unit (the
# parameter: development_zda()). A switch here keeps an open check for such a number (or
# withdraws it, back on the unit), so only those are found; few rows, read once per start
_UNIT_OF_NUMBER = (
    "coalesce((SELECT x.unit_id FROM receipts x WHERE x.register_id = c.register_id"
    " AND x.number = c.receipt_number), r.active_unit)"
)
_DROPPED_UNIT_CHECKS = (
    "SELECT c.register_id, c.id, c.receipt_number, c.reference, c.registered_unit,"  # noqa: S608 - constant SQL
    " r.timezone FROM checks c JOIN registers r ON r.id = c.register_id"
    " WHERE c.kind = 'unit' AND c.done_at IS NOT NULL AND c.registered_unit IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM checks d WHERE d.register_id = c.register_id"
    " AND d.kind = 'unit' AND d.receipt_number = c.receipt_number"
    " AND (d.done_at IS NULL OR d.id > c.id))"
    f" AND {_UNIT_OF_NUMBER} != c.registered_unit AND {_UNIT_OF_NUMBER} NOT IN {DEVELOPMENT_UNITS}"
    " ORDER BY c.register_id, c.receipt_number"
)


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One obligation as stored, with its register's time zone. ``failed``: its check
    failed; ``settled``: a failed ``unit`` check that a later unit check of its receipt
    number passed (the register no longer counts as "unit failed" by it)."""

    id: int
    register_id: str
    kind: CheckKind
    year: int
    receipt_number: int
    due_date: dt.date
    created_at: str
    alerts: tuple[str, ...]
    reference: str | None
    failed: bool
    done_at: str | None
    timezone: str
    settled: bool = False

    @classmethod
    def from_row(cls, row: Any) -> CheckRecord:
        values = list(row)
        values[5] = dt.date.fromisoformat(values[5])
        values[7] = tuple(json.loads(values[7]))
        values[9] = bool(values[9])
        values[12] = bool(values[12])
        return cls(*values)  # kind: the table's CHECK holds it to CheckKind

    def moment(self, day: dt.date) -> dt.datetime:
        """Midnight at the start of ``day`` in the register's time zone."""
        return dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(self.timezone))

    def overdue(self, now: dt.datetime) -> bool:
        """Open past its due date (from midnight after it, register time zone)."""
        return self.done_at is None and now >= self.moment(self.due_date + dt.timedelta(days=1))

    def reminders_due(self, now: dt.datetime) -> list[str]:
        """The reminders this open obligation should have had by ``now``, in order."""
        levels = ["created"]
        if now >= self.moment(self.due_date - dt.timedelta(days=WARN_DAYS)):
            levels.append("approaching")
        if self.overdue(now):
            levels.append("overdue")
        return levels


# due days after the receipt's date (a unit switch's: after the switch)
_WEEK = {"start": START_DAYS, "closing": CLOSING_DAYS, "unit": UNIT_DAYS}


def checked_year(issued_at: str, period: str | None = None) -> int:
    """The year a check is for: a Jahresbeleg's month ``period`` ("YYYY-MM", also when it
    is issued in January, caught up), else the receipt's date."""
    return int((period or issued_at)[:4])


def due_date(kind: str, issued_at: str, period: str | None = None) -> dt.date:
    """When the check (or report) of a receipt dated ``issued_at`` (register time) is due."""
    if kind in _WEEK:
        return dt.date.fromisoformat(issued_at[:10]) + dt.timedelta(days=_WEEK[kind])
    return dt.date(checked_year(issued_at, period) + 1, 2, 15)


def development_zda() -> str:
    """The fictitious provider AT100 that makes a unit a development one (the parameter of
    :data:`DEVELOPMENT_UNITS`), imported when first needed (as :func:`_journal`):
    :mod:`agent.signing` loads the cryptography the commands that list checks never use."""
    from agent.signing.config import DEV_ZDA

    return DEV_ZDA


def development_units(conn: sqlite3.Connection) -> frozenset[str]:
    """The ids of the till's development units: those that sign under AT100.

    The one test of a development register: its receipt (here), its outage
    (:mod:`agent.outage_watch`) or its Startbeleg (``init``) is signed by one of them. It
    goes by the provider the unit's identity pins, not by its id: AT100 is the sample
    code's fictitious provider (rksv.md 1.2), so such a unit cannot be registered in
    FinanzOnline, while any other (AT0, a provider's certificate) can and owes every step.
    A few rows: the units table."""
    rows = conn.execute(f"SELECT id FROM {DEVELOPMENT_UNITS} AS d", (development_zda(),))  # noqa: S608 - constant SQL
    return frozenset(str(row[0]) for row in rows)


def replaced_unit(conn: sqlite3.Connection, register_id: str, number: int) -> str | None:
    """The register's registered unit before receipt ``number``: the one that signed (or
    marked failed) the latest receipt before it among those not signed by a development
    unit, whose failure a switch to another certified unit reports in FinanzOnline.
    ``None``: every receipt before it carries the fictitious provider, so the register is a
    development one, never registered in FinanzOnline (it never switches to a certified
    unit: :mod:`agent.unit_switch`). A certified register finds its row at once (the index
    of its numbers, backwards), a development one reads its receipts."""
    row = conn.execute(
        "SELECT x.unit_id FROM receipts x WHERE x.register_id = ? AND x.number < ?"  # noqa: S608 - constant SQL
        f" AND x.unit_id NOT IN {DEVELOPMENT_UNITS} ORDER BY x.number DESC LIMIT 1",
        (register_id, number, development_zda()),
    ).fetchone()
    return None if row is None else str(row[0])


def registered_unit(
    conn: sqlite3.Connection, register_id: str, number: int, *, before: int | None = None
) -> str | None:
    """The unit FinanzOnline knows for the register before a switch from receipt
    ``number`` on: the unit the latest recorded ``unit`` check of ``number`` registered
    (of a switch before it that no receipt followed), else :func:`replaced_unit`.
    ``before``: only the checks recorded before that check (by id). ``None``: a
    development register."""
    row = conn.execute(
        "SELECT registered_unit FROM checks WHERE register_id = ? AND kind = 'unit'"
        " AND receipt_number = ? AND done_at IS NOT NULL AND registered_unit IS NOT NULL"
        " AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT 1",
        (register_id, number, before, before),
    ).fetchone()
    return replaced_unit(conn, register_id, number) if row is None else str(row[0])


def withdraw_unit_check(
    conn: sqlite3.Connection, register_id: str, number: int, at: dt.datetime, reason: str
) -> int | None:
    """Withdraw the open ``unit`` obligation of a switch before receipt ``number`` that no
    receipt followed, in the caller's transaction: the register went back to its registered
    unit (``reason`` says so), so the switch owes nothing in FinanzOnline. The row goes, as
    it is state (what is owed now); the journal keeps its ``check.due`` and records the
    ``check.withdrawn`` event. Returns the withdrawn obligation's id, ``None`` if there was
    none open (a recorded check is evidence and stays)."""
    row = conn.execute(
        "SELECT id, year FROM checks WHERE register_id = ? AND kind = 'unit'"
        " AND receipt_number = ? AND done_at IS NULL",
        (register_id, number),
    ).fetchone()
    if row is None:
        return None
    check_id, year = int(row[0]), int(row[1])
    conn.execute("DELETE FROM checks WHERE id = ?", (check_id,))
    _journal(
        conn,
        kind="check.withdrawn",
        register_id=register_id,
        at=at.isoformat(),
        data={"check": check_id, "kind": "unit", "year": year, "number": number, "reason": reason},
    )
    return check_id


def _journal(
    conn: sqlite3.Connection, *, kind: str, register_id: str, at: str, data: dict[str, Any]
) -> None:
    """:func:`storage.journal.append_event`, imported when first needed: importing this
    module (the command line does, for :data:`CheckKind`) loads no SQLAlchemy."""
    from storage.journal import append_event

    append_event(conn, kind=kind, register_id=register_id, at=at, data=data)


# where an obligation exists already, by whether it is a unit switch's: once a year of each
# kind (a register has one Startbeleg and one Schlussbeleg), one open per switch's first
# receipt (0012: a recorded one leaves room for the switch that changes its unit again)
_ONCE = {
    False: "(register_id, kind, year) WHERE kind != 'unit'",
    True: "(register_id, receipt_number) WHERE kind = 'unit' AND done_at IS NULL",
}
_DEVELOPMENT_SWITCH = (
    "register %s: switched to the development unit %s (the fictitious provider AT100) from"
    " receipt %d on: a development unit is not registered in FinanzOnline, so the switch"
    " needs no FinanzOnline step, and none is tracked"
)


def record_due(  # noqa: PLR0917 - the receipt that implies the check, as _issue_in has it
    conn: sqlite3.Connection,
    register_id: str,
    kind: str,
    number: int,
    issued_at: str,
    period: str | None,
    at: dt.datetime,
    *,
    unit_id: str | None = None,
) -> int | None:
    """Create the obligation a signed Start-, Jahres- or Schlussbeleg implies, in its
    transaction; a ``unit`` one (``number``: the first receipt after the switch, dated
    ``issued_at``: the switch) in the switch's.

    ``period`` is the Jahresbeleg's month ("YYYY-MM"): its year is the checked one, also
    when it is issued in January (caught up). ``unit_id``: the unit that signed it; a
    development unit's receipt (or a switch to one) implies nothing, and one INFO line says
    so. Returns the new obligation's id, ``None`` if that register had it already or owes
    nothing (then nothing is journaled).
    """
    if unit_id is not None and unit_id in development_units(conn):
        # logged before the commit: what it says holds of the register even if the
        # receipt's transaction rolls back
        if kind == "unit":
            log.info(_DEVELOPMENT_SWITCH, register_id, unit_id, number)
            return None
        log.info(
            "register %s: its %s (number %d) is signed by the development unit %s (the"
            " fictitious provider AT100), so it is a development register: it needs no"
            " FinanzOnline step (no registration, Belegcheck or decommissioning report), and"
            " none is tracked",
            register_id,
            _RECEIPT_NAMES.get(kind, "Jahresbeleg"),
            number,
            unit_id,
        )
        return None
    year = checked_year(issued_at, period)
    due = due_date(kind, issued_at, period).isoformat()
    cursor = conn.execute(
        "INSERT INTO checks (register_id, kind, year, receipt_number, due_date, created_at,"  # noqa: S608 - constant SQL
        " alerts, failed) VALUES (?, ?, ?, ?, ?, ?, '[]', 0)"
        f" ON CONFLICT {_ONCE[kind == 'unit']} DO NOTHING",
        (register_id, kind, year, number, due, at.isoformat()),
    )
    if cursor.rowcount == 0:
        return None
    check_id = int(cursor.lastrowid or 0)
    _journal(
        conn,
        kind="check.due",
        register_id=register_id,
        at=at.isoformat(),
        data={"check": check_id, "kind": kind, "year": year, "number": number, "due": due},
    )
    return check_id


def load_checks(
    conn: sqlite3.Connection,
    register_id: str | None = None,
    *,
    done: bool = False,
    failed: bool = False,
) -> list[CheckRecord]:
    """The open obligations, by due date; with ``done`` also the recorded ones, with
    ``failed`` also those whose last check failed (the register counts as "unit failed"
    until a check passes: what support must see), not a settled unit check (a later
    unit check of its receipt number passed: :attr:`CheckRecord.settled`). Not the
    obligations an earlier version recorded for receipts of a development unit: they are
    owed to nobody."""
    rows = conn.execute(
        f"SELECT {_COLUMNS}{_FROM} WHERE (? IS NULL OR c.register_id = ?)"
        f" AND (? OR c.done_at IS NULL OR (? AND c.failed AND NOT ({_SETTLED}))){_OWED}"
        " ORDER BY c.due_date, c.register_id, c.id",
        (register_id, register_id, done, failed, development_zda()),
    )
    return [CheckRecord.from_row(row) for row in rows]


class CheckWatch:
    """Raises the reminders of open obligations; call :meth:`tick` on a timer.

    A tick reads on a reader connection first and opens a write transaction only when it
    has something to record: most ticks find nothing, and they neither wait for the
    writer nor make a sale wait. Its first tick also adopts the obligations of registers
    that existed before the checks were tracked (see the 0004 migration): their signed
    Startbeleg and Jahresbelege, unless the due date is already past. It reads the
    receipts of the registers without any obligation for them, once per start. Every tick
    also creates the ``closing`` obligation of a closed register that has none (one closed
    before the 0007 migration, or whose Schlussbeleg recovery stored as its chain service
    had signed it): see :func:`_closings_to_adopt`. The first tick also creates the
    ``unit`` check a switch of a till of 0011 owed and dropped (:func:`_dropped_unit_checks`).
    """

    def __init__(self, db: TillDB, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._adopted = False

    def tick(self) -> list[tuple[int, str]]:
        """Journal every reminder due by now; return the (obligation, level) raised.

        Each one is logged once its transaction has committed.
        """
        now = self.clock.now()
        with self.db.read_connection() as conn:
            adopt = [] if self._adopted else _to_adopt(conn, now) + _dropped_unit_checks(conn)
            adopt += _closings_to_adopt(conn, now)
            due = _unsent(load_checks(conn), now)
        if not adopt:
            self._adopted = True
            if not due:
                return []
        lines: list[LogLine] = []
        raised: list[tuple[int, str]] = []
        with self.db.write_connection().transaction() as conn:
            for receipt in adopt:
                record_due(conn, *receipt, now)
            # read again under the write lock: a check recorded since is not reminded
            for record, new in _unsent(load_checks(conn), now):
                lines.extend(_remind(conn, record, level, now) for level in new)
                conn.execute(
                    "UPDATE checks SET alerts = ? WHERE id = ?",
                    (json.dumps([*record.alerts, *new]), record.id),
                )
                raised.extend((record.id, level) for level in new)
        self._adopted = True
        for level, message, args in lines:
            log.log(level, message, *args)
        return raised


def _unsent(records: list[CheckRecord], now: dt.datetime) -> list[tuple[CheckRecord, list[str]]]:
    """The open obligations with reminders due by ``now`` and not sent yet, with those."""
    due = [(r, [lvl for lvl in r.reminders_due(now) if lvl not in r.alerts]) for r in records]
    return [(record, new) for record, new in due if new]


_Implied = tuple[str, str, int, str, str | None]  # record_due's receipt: register .. period


def _to_adopt(conn: sqlite3.Connection, now: dt.datetime) -> list[_Implied]:
    """The signed Start-/Jahresbelege of registers without any obligation whose due date
    is today or later in the register's time zone (the 0004 migration says why), as
    :func:`record_due` takes them."""
    adopt = []
    untracked = conn.execute(_UNTRACKED, (development_zda(),))
    for register_id, kind, number, issued_at, document, timezone in untracked:
        period = json.loads(document).get("period")
        today = now.astimezone(ZoneInfo(timezone)).date()
        if due_date(kind, issued_at, period) >= today:
            adopt.append((register_id, kind, number, issued_at, period))
    return adopt


def _dropped_unit_checks(conn: sqlite3.Connection) -> list[_Implied]:
    """The ``unit`` checks a switch of a till of 0011 owed and dropped, as
    :func:`record_due` takes them (0012 says how they are found): due a week after the
    switch away from the unit the recorded check registered (the first since the check's
    ``check.done`` and since any switch back to that unit, by the journal, which this reads
    only for the register of such a check)."""
    adopt: list[_Implied] = []
    for register_id, check_id, number, reference, unit, timezone in conn.execute(
        _DROPPED_UNIT_CHECKS, (development_zda(),)
    ):
        at = _switched_away(conn, register_id, (check_id, number, reference), unit)
        if at is None:  # the journal names no such switch: nothing to date it by
            continue
        stamp = dt.datetime.fromisoformat(at).astimezone(ZoneInfo(timezone)).isoformat()
        adopt.append((register_id, "unit", number, stamp, None))
    return adopt


def _switched_away(
    conn: sqlite3.Connection, register_id: str, check: tuple[int, int, str], unit: str
) -> str | None:
    """When the register last switched away from ``unit`` at the check's receipt number
    after its latest ``check.done`` and stayed away (the journal's time), ``None``: never."""
    check_id, number, reference = check
    away: str | None = None
    events = conn.execute(
        "SELECT at, kind, data FROM journal WHERE register_id = ?"
        " AND kind IN ('register.unit_switched', 'check.done') ORDER BY seq",
        (register_id,),
    )
    for at, kind, data in events:
        facts = json.loads(data)
        if kind == "check.done":
            if (facts.get("kind"), facts.get("check"), facts.get("reference")) == (
                "unit",
                check_id,
                reference,
            ):
                away = None
        elif facts.get("from_number") == number:
            away = None if facts.get("new_unit") == unit else away or str(at)
    return away


def _closings_to_adopt(conn: sqlite3.Connection, now: dt.datetime) -> list[_Implied]:
    """The Schlussbelege of closed registers without their ``closing`` obligation, as
    :func:`record_due` takes them: issuing creates it with the receipt, so these are the
    registers closed before the 0007 migration and a Schlussbeleg that recovery stored as
    its chain service had signed it (it is not issued again). One is adopted unless it was
    stored more than :data:`CLOSING_DAYS` before today (register time zone): a register
    decommissioned long before the upgrade is not reminded of, as the 0004 migration says
    of old checks, while a Schlussbeleg recovered late is (its due date may be past)."""
    adopt: list[_Implied] = []
    for register_id, kind, number, issued_at, _, timezone, stored_at in conn.execute(
        _UNREPORTED_CLOSINGS, (development_zda(),)
    ):
        stored = dt.datetime.fromisoformat(stored_at).astimezone(ZoneInfo(timezone))
        today = now.astimezone(ZoneInfo(timezone)).date()
        if stored.date() + dt.timedelta(days=CLOSING_DAYS) >= today:
            adopt.append((register_id, kind, number, issued_at, None))
    return adopt


# the reminders: journal level, log severity, and what the line says after the obligation
_REMINDERS: dict[str, tuple[str, int, str]] = {
    "created": ("info", logging.INFO, "due by {due}"),
    "approaching": ("warning", logging.WARNING, "due by {due}, in {days} days or less"),
    "overdue": ("error", logging.ERROR, "it was due by {due} and no {noun} is recorded: overdue"),
}
_WHAT = {
    "start": "register the signature unit and the register in FinanzOnline and check the"
    " {receipt} with the BMF Belegcheck app or web service",
    "yearly": "check the {receipt} with the BMF Belegcheck app or web service (printed and"
    " kept 7 years unless checked with the web service)",
    "closing": "report the decommissioning (Außerbetriebnahme) of the register in"
    " FinanzOnline, after its {receipt}",
    "unit": "register the signature unit of its {receipt} in FinanzOnline and report"
    " there the failure of unit {replaced}, then check a receipt the new unit signed"
    " with the BMF Belegcheck app or web service",
}
# a switch with no certified receipt before it (replaced_unit: None; an earlier version
# let a development register go on with a certified unit): no failure to report
_NO_REPORT = (
    "register the signature unit of its {receipt} in FinanzOnline, then check a receipt"
    " the new unit signed with the BMF Belegcheck app or web service"
)


def _noun(kind: str) -> str:
    """What the operator records: a Belegcheck, or the FinanzOnline report of a closing."""
    return "report" if kind == "closing" else "check"


_RECEIPT_NAMES = {"start": "Startbeleg", "closing": "Schlussbeleg"}  # else a Jahresbeleg


def _receipt(record: CheckRecord) -> str:
    """The receipt ``record`` is the check of, as the log lines name it (a unit switch's:
    the receipts from the switch on)."""
    if record.kind == "unit":
        return f"unit switch (receipts from number {record.receipt_number} on)"
    name = _RECEIPT_NAMES.get(record.kind, f"Jahresbeleg {record.year}")
    return f"{name} (number {record.receipt_number})"


def _remind(conn: sqlite3.Connection, record: CheckRecord, level: str, now: dt.datetime) -> LogLine:
    """Journal one reminder (``alert.raised``); return its log line."""
    journal_level, severity, when = _REMINDERS[level]
    due = record.due_date.isoformat()
    _journal(
        conn,
        kind="alert.raised",
        register_id=record.register_id,
        at=now.isoformat(),
        data={
            "level": journal_level,
            "alert": f"check-{level}",
            "check": record.id,
            "kind": record.kind,
            "year": record.year,
            "number": record.receipt_number,
            "due": due,
        },
    )
    return (
        severity,
        "register %s: %s; %s (then: till-agent checks done %s %s %s --reference ...)",
        (
            record.register_id,
            _what(conn, record),
            when.format(due=due, days=WARN_DAYS, noun=_noun(record.kind)),
            record.register_id,
            record.kind,
            # several switches may owe theirs at once: a unit check is named by its receipt
            f"--receipt {record.receipt_number}"
            if record.kind == "unit"
            else f"--year {record.year}",
        ),
    )


def _what(conn: sqlite3.Connection, record: CheckRecord) -> str:
    """What the operator does for ``record``: for a unit switch, report the failure of the
    unit it replaced (none: no certified receipt before it)."""
    if record.kind != "unit":
        return _WHAT[record.kind].format(receipt=_receipt(record))
    replaced = registered_unit(conn, record.register_id, record.receipt_number, before=record.id)
    template = _NO_REPORT if replaced is None else _WHAT["unit"]
    return template.format(receipt=_receipt(record), replaced=replaced)


def record_check(  # noqa: PLR0917 - the obligation, then what the operator records
    writer: WriteConnection,
    clock: Clock,
    register_id: str,
    kind: str,
    year: int | None,
    reference: str,
    *,
    failed: bool = False,
    number: int | None = None,
) -> CheckRecord:
    """Record that a check (or the ``closing`` report) was made (``failed``: the Belegcheck
    found the receipt invalid; a FinanzOnline report does not fail).

    Recorded once: the reference is evidence and the journal is append-only. The same
    reference (and result) again is a harmless repeat (nothing is journaled): the check
    it was recorded for is found by it first, also among several of one kind. A failed
    check also raises an ERROR alert: the register counts as "unit failed" (rksv.md 6);
    it is not final: the check made again after the cause is fixed, with a new reference,
    is recorded as its own ``check.done`` (a passing one ends the failure). A unit check
    that passes settles the failed unit checks of its receipt number recorded before it
    (another switch's, whose check cannot be made again once a later switch owed its own:
    :attr:`CheckRecord.settled`); its ``check.done`` names them (``settles``).
    ``year`` may be left out for the Startbeleg and the Schlussbeleg (a register has one)
    and for a unit switch (its latest switch, an open obligation first); ``number``, the
    check's receipt number (a unit switch's: the first receipt after it), names one of
    several switches. A unit check keeps the unit it registered (``registered_unit``): the
    one FinanzOnline knows, whose failure the next switch reports (:func:`registered_unit`).

    Raises:
        NotFound: no such obligation.
        InvalidSale: a bad kind, a missing year, a failed ``closing`` report, a missing or
            bad reference (see :func:`~agent.contract.check_reference`), or (rule
            ``already-reported``) another reference or result for a check that passed,
            or another result for the reference of a failed one.
    """
    _check_input(kind, year, reference, failed)
    now = clock.now().isoformat()
    with writer.transaction() as conn:
        record = _find(conn, register_id, kind, (year, number), reference)
        if record.reference is not None:
            if (record.reference, record.failed) == (reference, failed):
                return record
            _refuse_unless_recheck(record, reference)
        # read before the record: the passing check it records settles them
        settles = [] if failed or kind != "unit" else _failed_before(conn, record)
        conn.execute(
            _RECORD,
            (reference, failed, now, record.id),
        )
        facts: dict[str, Any] = {
            "check": record.id,
            "kind": kind,
            "year": record.year,
            "reference": reference,
            "failed": failed,
        }
        if settles:
            facts["settles"] = settles
        _journal(conn, kind="check.done", register_id=register_id, at=now, data=facts)
        if failed:
            alert = {"level": "error", "alert": "check-failed", **facts, "reason": _UNIT_FAILED}
            _journal(conn, kind="alert.raised", register_id=register_id, at=now, data=alert)
    if failed:
        log.error(
            "register %s: the Belegcheck of its %s FAILED (reference %s): %s",
            register_id,
            _receipt(record),
            reference,
            _UNIT_FAILED,
        )
    if settles:
        log.info(
            "register %s: the Belegcheck of its %s passed (reference %s): it settles the"
            " failed unit check of the same receipt number (check %s), and the register no"
            ' longer counts as "unit failed" by it',
            register_id,
            _receipt(record),
            reference,
            ", ".join(map(str, settles)),
        )
    return replace(record, reference=reference, failed=failed, done_at=now)


def _failed_before(conn: sqlite3.Connection, record: CheckRecord) -> list[int]:
    """The failed ``unit`` checks of ``record``'s receipt number recorded before it (lower
    id) that no passing one settled yet: a passing ``record`` settles them."""
    rows = conn.execute(
        f"SELECT c.id FROM checks c WHERE c.register_id = ? AND c.kind = 'unit'"  # noqa: S608 - constant SQL
        f" AND c.receipt_number = ? AND c.id < ? AND c.failed AND NOT ({_SETTLED})"
        " ORDER BY c.id",
        (record.register_id, record.receipt_number, record.id),
    )
    return [int(row[0]) for row in rows]


_UNIT_FAILED = 'the register counts as "unit failed" (rksv.md section 6)'
# the unit a unit check registered: the one that signed its receipt, else (none yet) the
# register's active unit, which will (a switch from then on would owe a check of this
# number, open: the one being recorded); 0012 fills the checks recorded before it alike
_RECORD = (
    "UPDATE checks SET reference = ?, failed = ?, done_at = ?, registered_unit = CASE"
    " WHEN kind = 'unit' THEN coalesce((SELECT x.unit_id FROM receipts x"
    " WHERE x.register_id = checks.register_id AND x.number = checks.receipt_number),"
    " (SELECT r.active_unit FROM registers r WHERE r.id = checks.register_id)) END"
    " WHERE id = ?"
)


def _refuse_unless_recheck(record: CheckRecord, reference: str) -> None:
    """A recorded check is final once it passed. After a failed one the operator fixes
    the cause and checks again: that check has a reference of its own and is recorded
    over it (the failure stays in the journal); the failed reference cannot pass."""
    if record.failed and reference != record.reference:
        return
    again = " after it failed, a new check has a new reference" if record.failed else ""
    raise InvalidSale(
        "reference",
        "already-reported",
        f"the {record.kind} {_noun(record.kind)} of register {record.register_id}"
        f" ({_which(record)}) has the reference {record.reference!r}"
        f"{' (failed)' if record.failed else ''} already; a {_noun(record.kind)}'s reference"
        f" is evidence and is recorded once{again}",
    )


def _which(record: CheckRecord) -> str:
    """Which of a register's checks of its kind ``record`` is: its year, a unit switch's
    first receipt (several switches may fall in one year)."""
    if record.kind == "unit":
        return f"receipts from number {record.receipt_number} on"
    return str(record.year)


def _check_input(kind: str, year: int | None, reference: str, failed: bool) -> None:
    if kind not in CHECK_KINDS:
        raise InvalidSale("kind", "check-kind", f"a check is one of {', '.join(CHECK_KINDS)}")
    check_reference(reference, "Belegcheck or FinanzOnline")
    if year is None and kind == "yearly":
        raise InvalidSale(
            "year",
            "required",
            "give the year of the Jahresbeleg (the command line's --year, the API's year)",
        )
    if failed and kind == "closing":
        raise InvalidSale(
            "failed",
            "allowed-values",
            "only a Belegcheck (start, yearly) can fail; the decommissioning report is"
            " recorded with its FinanzOnline reference",
        )


def _find(
    conn: sqlite3.Connection,
    register_id: str,
    kind: str,
    which: tuple[int | None, int | None],
    reference: str,
) -> CheckRecord:
    """The obligation a check is recorded for, of the ``which`` (year, receipt number)
    given: the one recorded with ``reference`` already (a repeat), else an open one, the
    latest (a unit switch's: a register may have several), else the latest."""
    year, number = which
    row = conn.execute(
        f"SELECT {_COLUMNS}{_FROM} WHERE c.register_id = ? AND c.kind = ?"
        " AND (? IS NULL OR c.year = ?) AND (? IS NULL OR c.receipt_number = ?)"
        " ORDER BY c.reference IS NOT ?, c.done_at IS NOT NULL, c.id DESC",
        (register_id, kind, year, year, number, number, reference),
    ).fetchone()
    if row is None:
        of = "" if year is None else f" for {year}"
        of += "" if number is None else f" of receipt {number}"
        raise NotFound(f"register {register_id} has no {kind} {_noun(kind)}{of}")
    return CheckRecord.from_row(row)

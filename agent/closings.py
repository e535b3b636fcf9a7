"""Monats- and Jahresbelege: which month a closing closes, and which closings are due.

A month's closing is due from 23:59 of its last day, in the register's time zone; the
months the till was off for are caught up in order. December's is the Jahresbeleg. By
hand, a closing may be issued earlier on the last day (after the day's business).

A register's ``last_closing`` is the latest month whose closing is stored. A Jahresbeleg
that waits for its unit is a ``waiting_specials`` row (:mod:`agent.waiting`) instead: it
must be signed, but the Monatsbelege after it may carry the failure marker (rksv.md 5,
"Which zero receipts may carry the failure marker"; 6), so they do not wait behind it and
``last_closing`` may pass its month. Its month counts as settled for what comes after it.

A closing that fell due only through a forward jump of the wall clock that this process
saw (:class:`agent.clock.JumpWatch`) waits until the jump is an hour old on the boot clock
(:func:`first_held`), as does one the clock reaches by time passing after the jump unless
a jump back corrected it meanwhile (the clock is still as far ahead): a wrong clock (a bad
RTC, a mistyped date) is usually corrected within minutes, and a signed Jahresbeleg issued
on it would close the year 40 days early, for good. The wait is journaled
(``closing.held``, with an ``alert.raised``); sales go on. A hand-issued closing during it
is refused unless confirmed. A service (or the command line's process) started in the same
boot takes the journaled holds up (:func:`journaled_holds`).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Collection
from typing import Any
from zoneinfo import ZoneInfo

from agent.clock import JUMP_SETTLE_S, Clock, JumpWatch, WallJump
from agent.errors import RegisterStateError
from storage.journal import append_event

__all__ = [
    "CLOSING_NAMES",
    "closing_kind",
    "due_for",
    "due_periods",
    "first_held",
    "hand_closing_from",
    "journal_hold",
    "next_closing_at",
    "period_of",
    "period_to_close",
]


def period_to_close(
    reg: sqlite3.Row, kind: str, now: dt.datetime, waiting: Collection[str] = ()
) -> str:
    """The month ("YYYY-MM") a Monats- (``kind`` "monthly") or Jahresbeleg ("yearly")
    issued by hand at ``now`` closes for register ``reg``: the current month in the
    register's time zone, from its last day on. ``waiting``: the months whose Jahresbeleg
    waits for the unit; the months after one are not held up by it (a hand-issued one of
    its own month, signed, is the one that waits).

    December's closing is the Jahresbeleg, and only December's (rksv.md 6): it must be
    signed, printed and checked, so a Monatsbeleg must not stand in for it, nor a
    "Jahresbeleg" for another month take its Belegcheck. A closing is the counter at the
    month's end: before the last day it would leave the rest of the month out.

    Raises:
        RegisterStateError: the kind does not fit the month, the month's last day has not
            come, the month is closed already, or an earlier one is not.
    """
    local = now.astimezone(ZoneInfo(reg["timezone"]))
    period = local.strftime("%Y-%m")
    last = reg["last_closing"]
    if last is not None and period <= last:
        raise RegisterStateError(
            f"register {reg['id']}: the month {period} is closed already (last closing"
            f" {last}); a second Monats-/Jahresbeleg for it is not issued"
        )
    first = period_of(reg["created_at"], reg["timezone"])
    expected = _next_period(last) if last is not None else first
    while expected in waiting and expected < period:
        expected = _next_period(expected)
    if period > expected:
        raise RegisterStateError(
            f"register {reg['id']}: the closings from {expected} on are not issued yet;"
            f" they come first, in order (the agent's closing job catches them up)"
        )
    if kind != (fits := closing_kind(period)):
        raise RegisterStateError(
            f"register {reg['id']}: {period} is closed by a {CLOSING_NAMES[fits]}, not a"
            f" {CLOSING_NAMES[kind]} (the Jahresbeleg is December's closing): use {fits}"
        )
    last_day = _closing_time(period, local.tzinfo).date()
    if local.date() < last_day:
        raise RegisterStateError(
            f"register {reg['id']}: the {CLOSING_NAMES[kind]} of {period} is issued on its last"
            f" day ({last_day.isoformat()}) at the earliest, as the counter at the month's"
            " end; the agent's closing job issues it by itself at 23:59"
        )
    return period


CLOSING_NAMES = {"monthly": "Monatsbeleg", "yearly": "Jahresbeleg"}


def due_periods(last_closing: str | None, first: str, now_local: dt.datetime) -> list[str]:
    """The months ("YYYY-MM") whose closing is due at ``now_local``, oldest first."""
    period = _next_period(last_closing) if last_closing is not None else first
    due = []
    while _closing_time(period, now_local.tzinfo) <= now_local:
        due.append(period)
        period = _next_period(period)
    return due


def due_for(reg: sqlite3.Row, now: dt.datetime) -> list[str]:
    """The months whose closing is due at ``now`` for register ``reg`` (its
    ``last_closing``, ``created_at`` and ``timezone``), oldest first."""
    first = period_of(reg["created_at"], reg["timezone"])
    return due_periods(reg["last_closing"], first, now.astimezone(ZoneInfo(reg["timezone"])))


def closing_kind(period: str) -> str:
    """The kind of ``period``'s closing: December's is the Jahresbeleg."""
    return "yearly" if period.endswith("-12") else "monthly"


def next_closing_at(last_closing: str | None, first: str, timezone: str) -> dt.datetime:
    """When the next closing after ``last_closing`` (or the first one, of month ``first``)
    is due: 23:59 of that month's last day in ``timezone``."""
    period = _next_period(last_closing) if last_closing is not None else first
    return _closing_time(period, ZoneInfo(timezone))


def period_of(stamp: str, timezone: str) -> str:
    """The month of ISO time ``stamp`` in ``timezone``."""
    return dt.datetime.fromisoformat(stamp).astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def first_held(periods: list[str], timezone: str, watch: JumpWatch) -> tuple[int, WallJump] | None:
    """The index of the first of the due ``periods`` (oldest first) whose closing time the
    wall clock may have reached only through a jump that has not settled, and that jump;
    ``None`` when none. The ones after it wait with it: closings come in order."""
    tz = ZoneInfo(timezone)
    for index, period in enumerate(periods):
        jump = watch.holding(_closing_time(period, tz))
        if jump is not None:
            return index, jump
    return None


def hand_closing_from(period: str, timezone: str) -> dt.datetime:
    """The first moment ``period``'s closing may be issued by hand: its last day's start."""
    last = _closing_time(period, ZoneInfo(timezone))
    return last.replace(hour=0, minute=0)


def journal_hold(
    conn: sqlite3.Connection,
    register_id: str,
    periods: list[str],
    jump: WallJump,
    until: str,
    *,
    boot_id: str,
) -> None:
    """Journal that ``periods``' closings wait for ``jump``, seen in boot ``boot_id``, to
    settle (about ``until`` on the wall clock), with an alert. ``boot_id`` and ``boot``
    let a command or a restarted service of the same boot see the hold."""
    facts: dict[str, Any] = {
        "periods": periods,
        "jump_seconds": round(jump.seconds, 3),
        "before": jump.before.isoformat(),
        "after": jump.after.isoformat(),
        "until": until,
    }
    at = jump.after.isoformat()
    data = {
        **facts,
        "capped": jump.capped,
        "boot_id": boot_id,
        "boot": round(jump.boot, 3),
        "settle_seconds": JUMP_SETTLE_S,
    }
    append_event(conn, kind="closing.held", register_id=register_id, at=at, data=data)
    alert = {"level": "error", "alert": "closing-held", **facts}
    append_event(conn, kind="alert.raised", register_id=register_id, at=at, data=alert)


def journaled_holds(conn: sqlite3.Connection, clock: Clock) -> list[tuple[str, WallJump]]:
    """The holds journaled in ``clock``'s boot that have not settled: each ``closing.held``
    event's register and jump (a restarted service keeps them)."""
    rows = conn.execute(
        "SELECT register_id, data FROM journal WHERE kind = 'closing.held'"
        " AND seq > (SELECT coalesce(max(seq), 0) FROM journal) - ? ORDER BY seq",
        (_HOLD_LOOKBACK,),
    ).fetchall()
    holds: list[tuple[str, WallJump]] = []
    for register_id, text in rows:
        data: dict[str, Any] = json.loads(text)
        if _unsettled_here(data, clock):
            holds.append((register_id, _jump_of(data)))
    return holds


def _unsettled_here(data: dict[str, Any], clock: Clock) -> bool:
    """Whether the jump of a ``closing.held`` event's ``data`` was seen in ``clock``'s boot
    and is younger than the settle period. Another boot's hold (another ``boot_id``, or
    none journaled) ended with the process that saw it, whatever its boot clock said: each
    boot's boot clock starts near zero, so a new one soon passes the journaled value."""
    if data.get("boot_id") != clock.boot_id:
        return False
    return 0 <= clock.boottime() - float(data["boot"]) < JUMP_SETTLE_S


def _jump_of(data: dict[str, Any]) -> WallJump:
    """The jump a ``closing.held`` event's ``data`` journaled."""
    return WallJump(
        dt.datetime.fromisoformat(data["before"]),
        dt.datetime.fromisoformat(data["after"]),
        float(data["jump_seconds"]),
        float(data["boot"]),
        capped=bool(data.get("capped", False)),
    )


# journal events read back for a hold: an hour of the busiest till writes far fewer (a
# receipt a second would be 3,600 receipt events), and the read stays a short index range
_HOLD_LOOKBACK = 50_000


def _next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _closing_time(period: str, tz: dt.tzinfo | None) -> dt.datetime:
    following = _next_period(period)
    start = dt.datetime(int(following[:4]), int(following[5:7]), 1, tzinfo=tz)
    return start - dt.timedelta(minutes=1)

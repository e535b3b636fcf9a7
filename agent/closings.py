"""Monats- and Jahresbelege: which month a closing closes, and which closings are due.

A month's closing is due from 23:59 of its last day, in the register's time zone; the
months the till was off for are caught up in order. December's is the Jahresbeleg.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from zoneinfo import ZoneInfo

from agent.errors import RegisterStateError

__all__ = ["due_periods", "period_of", "period_to_close"]


def period_to_close(reg: sqlite3.Row, now: dt.datetime) -> str:
    """The month ("YYYY-MM") a Monats-/Jahresbeleg issued at ``now`` closes for register
    ``reg``; refuse a month that is closed already, or one that skips an earlier one.

    Raises:
        RegisterStateError: that month is closed already, or an earlier one is not.
    """
    period = now.astimezone(ZoneInfo(reg["timezone"])).strftime("%Y-%m")
    last = reg["last_closing"]
    if last is not None and period <= last:
        raise RegisterStateError(
            f"register {reg['id']}: the month {period} is closed already (last closing"
            f" {last}); a second Monats-/Jahresbeleg for it is not issued"
        )
    first = period_of(reg["created_at"], reg["timezone"])
    expected = _next_period(last) if last is not None else first
    if period > expected:
        raise RegisterStateError(
            f"register {reg['id']}: the closings from {expected} on are not issued yet;"
            f" they come first, in order (the agent's closing job catches them up)"
        )
    return period


def due_periods(last_closing: str | None, first: str, now_local: dt.datetime) -> list[str]:
    """The months ("YYYY-MM") whose closing is due at ``now_local``, oldest first."""
    period = _next_period(last_closing) if last_closing is not None else first
    due = []
    while _closing_time(period, now_local.tzinfo) <= now_local:
        due.append(period)
        period = _next_period(period)
    return due


def period_of(stamp: str, timezone: str) -> str:
    """The month of ISO time ``stamp`` in ``timezone``."""
    return dt.datetime.fromisoformat(stamp).astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def _next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _closing_time(period: str, tz: dt.tzinfo | None) -> dt.datetime:
    following = _next_period(period)
    start = dt.datetime(int(following[:4]), int(following[5:7]), 1, tzinfo=tz)
    return start - dt.timedelta(minutes=1)

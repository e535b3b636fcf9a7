"""Time is injected: wall time for receipts and calendars, monotonic time for loops, and
boot time (monotonic, but counting the time the machine was suspended) for ages that the
law counts in real hours, such as an outage's 48-hour window.

:class:`SystemClock` is the real one; :class:`FrozenClock` is for tests and the scenario
simulator, and can be moved by hand.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol

__all__ = ["Clock", "FrozenClock", "SystemClock"]

# elsewhere the monotonic clock (macOS's CLOCK_MONOTONIC counts sleep; others may not)
_BOOTTIME: int = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """The current wall time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""
        ...

    def boottime(self) -> float:
        """Seconds on a clock that never jumps but keeps counting while suspended."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        # CLOCK_MONOTONIC stops while the machine sleeps; CLOCK_BOOTTIME (Linux) does not
        return time.clock_gettime(_BOOTTIME)


class FrozenClock:
    """A clock that moves only when told to: ``advance`` moves all three clocks, ``suspend``
    the wall and boot clocks (the machine slept), ``jump`` and ``set`` only the wall clock."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start")
        self._now = start
        self._mono = 1000.0
        self._boot = 1000.0
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def boottime(self) -> float:
        with self._lock:
            return self._boot

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            self._mono += seconds
            self._boot += seconds

    def suspend(self, seconds: float) -> None:
        """The machine sleeps for ``seconds``: the monotonic clock stops, the others run."""
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)
            self._boot += seconds

    def jump(self, seconds: float) -> None:
        """Move only the wall clock, as an NTP correction or a wrong RTC would."""
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)

    def set(self, when: dt.datetime) -> None:
        with self._lock:
            self._now = when

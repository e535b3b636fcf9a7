"""Time is injected: wall time for receipts and calendars, monotonic time for loops, and
boot time (monotonic, but counting the time the machine was suspended) for ages that the
law counts in real hours, such as an outage's 48-hour window. The boot's id tells a boot
clock reading of this boot from one of another (each starts near zero).

:class:`SystemClock` is the real one; :class:`FrozenClock` is for tests and the scenario
simulator, and can be moved by hand. :class:`JumpWatch` notices forward jumps of the wall
clock (the wall clock ran ahead of the boot clock between two looks): what fell due only
through such a jump waits until the clock has settled.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "JUMP_SETTLE_S",
    "JUMP_TOLERANCE_S",
    "Clock",
    "FrozenClock",
    "JumpWatch",
    "SystemClock",
    "WallJump",
]

# as the outage watch's default tolerance: NTP slews by milliseconds a second, and a look
# that was slow (a busy machine, a long signing) does not run the clocks apart by minutes
JUMP_TOLERANCE_S = 120.0
# how long a forward jump of the wall clock is not trusted, in boot-clock seconds: NTP
# corrects a wrong RTC within minutes of the network coming up, and an operator who set
# the wrong date notices it on the next receipts; an hour covers both, and a closing that
# was truly due (a clock that was behind and was corrected) is only an hour late
JUMP_SETTLE_S = 3600.0

# elsewhere the monotonic clock (macOS's CLOCK_MONOTONIC counts sleep; others may not)
_BOOTTIME: int = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
# Linux: a random id the kernel makes at each boot
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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

    @property
    def boot_id(self) -> str:
        """This boot's id: what another boot journaled is not of it, whatever its boot
        clock said (two boots' boot clocks run over the same seconds)."""
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

    @property
    def boot_id(self) -> str:
        return _system_boot_id()


@functools.cache
def _system_boot_id() -> str:
    """The kernel's id of this boot, read once (it stays while the machine runs). Without
    one (not Linux) an id of this process: what it journals is then another boot's to the
    next process, which holds nothing it did not see itself."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return uuid.uuid4().hex


class FrozenClock:
    """A clock that moves only when told to: ``advance`` moves all three clocks, ``suspend``
    the wall and boot clocks (the machine slept), ``jump`` only the wall clock, and ``set``
    the wall clock to a time (forward: as ``advance``, back: as ``jump``). Each clock is a
    boot of its own (a new ``boot_id``); setting ``boot_id`` reboots without resetting the
    boot clock."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start")
        self._now = start
        self._mono = 1000.0
        self._boot = 1000.0
        self._lock = threading.Lock()
        self.boot_id = uuid.uuid4().hex

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
        """Move the wall clock to ``when``: forward, time passes until then (as
        :meth:`advance`); back, the clock is set back (as :meth:`jump`)."""
        with self._lock:
            passed = max(0.0, (when - self._now).total_seconds())
            self._now = when
            self._mono += passed
            self._boot += passed


@dataclass(frozen=True, slots=True)
class WallJump:
    """A forward jump of the wall clock, seen at ``boot`` (boot clock): between the look at
    wall time ``before`` and the one at ``after`` the wall clock ran ``seconds`` ahead of
    the boot clock. Every moment after ``before`` may have been reached only through it:
    up to ``after`` by the jump itself (when in that interval it came is not known), later
    ones by time passing on a clock that is still ``seconds`` ahead. Once a jump back has
    ``capped`` it at ``after`` (the wall time it went back to), the moments after that
    are reached again by time passing on the corrected clock."""

    before: dt.datetime
    after: dt.datetime
    seconds: float
    boot: float
    capped: bool = False

    def covers(self, moment: dt.datetime) -> bool:
        """Whether the wall clock may have reached ``moment`` only through this jump."""
        return self.before < moment and (not self.capped or moment <= self.after)


class JumpWatch:
    """The forward jumps of the wall clock this process has seen, while they settle.

    Each :meth:`look` compares how far the wall clock and the boot clock moved since the
    previous one (a suspend moves both alike). A forward jump of at least ``settle_s`` (a
    wrong date, not an NTP step of minutes, which would move a closing by less than a hold
    delays it) is remembered for ``settle_s`` seconds of the boot clock, and covers every
    moment after the wall time it left meanwhile: a month end the clock reaches minutes
    after a jump is reached on the wrong clock too. A later jump back caps what it covers
    at the wall time it went back to: a moment the clock is set back before is reached
    again by time passing. Thread-safe: the closing timer and the sales look at the same
    watch.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        tolerance_s: float = JUMP_TOLERANCE_S,
        settle_s: float = JUMP_SETTLE_S,
    ) -> None:
        self.clock = clock
        self.tolerance_s = tolerance_s
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._last = (clock.boottime(), clock.now())
        self._jumps: tuple[WallJump, ...] = ()

    def look(self) -> tuple[dt.datetime, bool]:
        """The wall time now, and whether a jump (either way) was seen since the last look."""
        with self._lock:
            boot, wall = self.clock.boottime(), self.clock.now()
            last_boot, last_wall = self._last
            self._last = (boot, wall)
            delta = (wall - last_wall).total_seconds() - (boot - last_boot)
            jumps = self._jumps
            if jumps:  # (mostly none: no generator at every sale's look)
                jumps = tuple(j for j in jumps if boot - j.boot < self.settle_s)
            if delta < -self.tolerance_s:
                jumps = tuple(_capped(j, wall) for j in jumps if j.before < wall)
            elif delta >= self.settle_s:  # (a smaller step moves a closing by less than
                # the hold would delay it: an NTP correction of minutes is trusted at once)
                jumps = (*jumps, WallJump(last_wall, wall, delta, boot))
            self._jumps = jumps
            return wall, abs(delta) > self.tolerance_s

    def resume(self, jump: WallJump) -> None:
        """Hold on to ``jump``, seen by an earlier process of this boot (its journaled
        hold), as if this one had seen it: a restart does not end a hold."""
        with self._lock:
            if all(j.boot != jump.boot for j in self._jumps):
                self._jumps = (*self._jumps, jump)

    def holding(self, moment: dt.datetime) -> WallJump | None:
        """The jump not yet settled through which the wall clock may have reached
        ``moment`` (the latest of several), or ``None``."""
        boot = self.clock.boottime()
        with self._lock:
            jumps = self._jumps
        held = [j for j in jumps if boot - j.boot < self.settle_s and j.covers(moment)]
        return held[-1] if held else None

    def settles_in(self, jump: WallJump) -> float:
        """Seconds of the boot clock until ``jump`` has settled."""
        return max(0.0, self.settle_s - (self.clock.boottime() - jump.boot))


def _capped(jump: WallJump, wall: dt.datetime) -> WallJump:
    """``jump`` after the wall clock went back to ``wall``: it covers nothing beyond it."""
    return WallJump(jump.before, min(jump.after, wall), jump.seconds, jump.boot, capped=True)

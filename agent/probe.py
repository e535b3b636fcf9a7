"""The background probe: asks the unit of every open outage whether it is back.

A probe never signs a receipt and never consumes a number. Attempts back off with jitter
(5 s doubling to at most 60 s by default) on the monotonic clock, so a wall-clock jump
neither floods nor stalls it. When a probe succeeds, the service issues the signed
Sammelbeleg at once, which closes the outage.

Registers share units: once a unit signs again (another register's Sammelbeleg), every
register waiting for that unit is probed and recovered at once, in the same round, not
at its own next attempt, so none of them issues fallback receipts while its unit signs.
A unit whose probe failed is not asked again in the same round for another register (that
register's probe fails with the same reason), so a hung unit costs one deadline a round.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from agent.errors import StorageError, TillAgentError, UnitUnavailable
from agent.loop import BackgroundLoop
from agent.receipts import ReceiptService

__all__ = ["Backoff", "Prober"]

_log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Jittered exponential backoff: ``initial * 2**n``, capped, times 1 +/- ``jitter``."""

    initial: float = 5.0
    cap: float = 60.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        base = min(self.cap, self.initial * float(2 ** min(attempt, 30)))
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


class Prober:
    """Probes the units of open outages and triggers recovery; one thread for all registers."""

    def __init__(
        self, service: ReceiptService, backoff: Backoff | None = None, deadline: float = 3.0
    ) -> None:
        self.service = service
        self.backoff = backoff or Backoff()
        self.deadline = deadline
        self._attempts: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self._failing: set[str] = set()  # registers whose visit failed (logged once)
        self._round_failed: dict[str, str] = {}  # units whose probe failed this round: why
        self._loop = BackgroundLoop(
            "probe", self.run_once, max_wait=1.0, error_wait=self.backoff.initial
        )
        self.heartbeat = service.clock.monotonic()

    def wake(self) -> None:
        """Look at the open outages now (a new one was opened)."""
        self._loop.wake()

    def run_once(self) -> float:
        """Probe every register that is due; return the seconds until the next one is due."""
        now = self.service.clock.monotonic()
        self.heartbeat = now
        self._round_failed.clear()
        targets = self.service.probe_targets()
        waits = {register_id: self._visit_or_log(register_id, now) for register_id in targets}
        again, seen = self._waiting_for_units_back(targets), set[str]()
        while again:  # each register at most once more: a unit back makes it due now
            seen |= again
            for register_id in sorted(again):
                self._next[register_id] = now
                waits[register_id] = self._visit_or_log(register_id, now)
            again = self._waiting_for_units_back(targets) - seen
        for gone in set(self._next) - set(targets):
            self._next.pop(gone, None)
            self._attempts.pop(gone, None)
        self._failing &= set(targets)
        return min(waits.values(), default=self.backoff.cap)

    def _waiting_for_units_back(self, targets: list[str]) -> set[str]:
        """The registers in ``targets`` that still wait for a unit that signed since the
        last look (:meth:`agent.outages.OutageBook.units_back`)."""
        back = self.service.outages.units_back()
        if not back:
            return set()
        for unit_id in back:  # it signed since its probe failed: ask it again
            self._round_failed.pop(unit_id, None)
        waiting = set(self.service.probe_targets()) & set(targets)
        return {r for r in waiting if self._unit_id(r) in back}

    def _unit_id(self, register_id: str) -> str | None:
        try:
            return self.service.unit_of(register_id).identity.unit_id
        except (TillAgentError, OSError):
            return None

    def _visit_or_log(self, register_id: str, now: float) -> float:
        """:meth:`_visit` when the register is due; a register whose visit fails
        unexpectedly is logged (once per run of failures: again only after a visit that
        ran and succeeded, not after one that was not due yet) and backs off, and the
        other registers are probed all the same (DESIGN.md invariant 8). A storage failure
        (a full disk) is one line; anything else comes with its traceback."""
        due = self._next.setdefault(register_id, now + self.backoff.delay(0))
        if now < due:
            return due - now
        try:
            wait = self._visit(register_id, now)
        except Exception as exc:
            if register_id not in self._failing:
                self._failing.add(register_id)
                _log.error(
                    "register %s: its probe or recovery failed (%s); it is retried with"
                    " backoff, the other registers go on (logged again only after it succeeded)",
                    register_id,
                    exc,
                    exc_info=None if isinstance(exc, StorageError) else exc,
                )
            attempt = self._attempts.get(register_id, 0) + 1
            self._attempts[register_id] = attempt
            self._next[register_id] = now + self.backoff.delay(attempt)
            return self._next[register_id] - now
        self._failing.discard(register_id)
        return wait

    def _visit(self, register_id: str, now: float) -> float:
        """Probe a register that is due; the seconds until its next probe."""
        if self._probe(register_id):
            return self.backoff.cap
        attempt = self._attempts.get(register_id, 0) + 1
        self._attempts[register_id] = attempt
        self._next[register_id] = now + self.backoff.delay(attempt)
        return self._next[register_id] - now

    def _probe(self, register_id: str) -> bool:
        unit_id = None
        try:
            unit = self.service.unit_of(register_id)
            unit_id = unit.identity.unit_id
            failed = self._round_failed.get(unit_id)
            if failed is not None:  # a hung unit costs one deadline per round, not one each
                raise UnitUnavailable(f"{failed} (its probe for another register, just now)")
            unit.probe(deadline=time.monotonic() + self.deadline)  # units run on real time
        except (TillAgentError, OSError) as exc:
            if unit_id is not None:
                self._round_failed.setdefault(unit_id, str(exc))
            self.service.record_probe(register_id, False, str(exc))
            return False
        self.service.record_probe(register_id, True, "unit answered")
        recovered = self.service.recover(register_id) is not None
        if recovered:
            self._next.pop(register_id, None)
            self._attempts.pop(register_id, None)
        return recovered

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

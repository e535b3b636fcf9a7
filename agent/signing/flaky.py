"""A unit wrapper that fails on command, for tests, demos and the scenario simulator.

Modes: ``up`` (pass through), ``down`` (every call fails), ``slow`` (answers after
``delay`` seconds, normally past the deadline), ``garbage`` (returns a signature that
does not verify).
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from agent.errors import UnitUnavailable
from agent.signing.base import Capabilities, Identity, SignatureUnit

__all__ = ["FlakyUnit", "Mode"]

Mode = Literal["up", "down", "slow", "garbage"]


class FlakyUnit:
    """Wraps a real unit and misbehaves as told by :attr:`mode`."""

    def __init__(self, inner: SignatureUnit, mode: Mode = "up", delay: float = 10.0) -> None:
        self.inner = inner
        self.mode: Mode = mode
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def identity(self) -> Identity:
        return self.inner.identity

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        with self._lock:
            self.calls += 1
        self._misbehave(deadline)
        signature = self.inner.sign(data, deadline=deadline)
        if self.mode == "garbage":
            return bytes(reversed(signature))
        return signature

    def probe(self, *, deadline: float) -> None:
        self._misbehave(deadline)
        self.inner.probe(deadline=deadline)

    def _misbehave(self, deadline: float) -> None:
        if self.mode == "down":
            raise UnitUnavailable(f"unit {self.identity.unit_id} is down (simulated)")
        if self.mode == "slow":
            time.sleep(max(0.0, min(self.delay, deadline - time.monotonic() + 0.05)))

    def close(self) -> None:
        self.inner.close()

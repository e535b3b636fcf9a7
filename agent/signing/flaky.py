"""A unit wrapper that fails on command, for tests, demos and the scenario simulator.

Modes: ``up`` (pass through), ``down`` (every call fails), ``slow`` (hangs ``delay``
seconds, normally past the deadline, and its driver gives up there), ``late`` (answers
validly after ``delay`` seconds, whatever the deadline: a driver without a timeout of its
own), ``garbage`` (returns a signature that does not verify), ``flap`` (every other call
fails).

With a ``mode_file`` the mode is read from that file whenever it changes, so a running
till service can be switched from outside (``till-agent simulate unit down``). Only
units configured with ``simulate = true`` (the development unit) are wrapped this way.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Literal, cast, get_args

from agent.errors import UnitUnavailable
from agent.signing.base import Capabilities, Identity, SignatureUnit

__all__ = ["MODES", "FlakyUnit", "Mode", "write_mode"]

Mode = Literal["up", "down", "slow", "late", "garbage", "flap"]
MODES: tuple[str, ...] = get_args(Mode)


def write_mode(path: Path, mode: str) -> None:
    """Switch the unit watching ``path`` to ``mode`` (atomically: temp file + rename)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(mode + "\n")
    os.replace(tmp, path)


class FlakyUnit:
    """Wraps a real unit and misbehaves as told by :attr:`mode`."""

    def __init__(
        self,
        inner: SignatureUnit,
        mode: Mode = "up",
        delay: float = 10.0,
        *,
        mode_file: Path | None = None,
    ) -> None:
        self.inner = inner
        self._mode: Mode = mode
        self.delay = delay
        self.calls = 0
        self.mode_file = mode_file
        self._seen: int | None = None  # mtime_ns of the mode file last read
        self._lock = threading.Lock()

    @property
    def mode(self) -> Mode:
        if self.mode_file is not None:
            self._reload()
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = value

    def _reload(self) -> None:
        assert self.mode_file is not None
        try:
            stamp = self.mode_file.stat().st_mtime_ns
            if stamp != self._seen:
                text = self.mode_file.read_text().strip()
                self._seen = stamp
                if text in MODES:
                    self._mode = cast(Mode, text)
        except OSError:
            return

    @property
    def identity(self) -> Identity:
        return self.inner.identity

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        with self._lock:
            self.calls += 1
            calls = self.calls
        self._misbehave(deadline, calls)
        signature = self.inner.sign(data, deadline=deadline)
        if self.mode == "garbage":
            return bytes(reversed(signature))
        return signature

    def probe(self, *, deadline: float) -> None:
        with self._lock:
            self.calls += 1
            calls = self.calls
        self._misbehave(deadline, calls)
        self.inner.probe(deadline=deadline)

    def _misbehave(self, deadline: float, calls: int) -> None:
        mode = self.mode
        if mode == "down" or (mode == "flap" and calls % 2 == 1):
            raise UnitUnavailable(f"unit {self.identity.unit_id} is {mode} (simulated)")
        if mode == "late":
            time.sleep(self.delay)  # then it signs, valid but late: sign_verified drops it
        elif mode == "slow":
            # a unit that hangs; its driver gives up at the deadline, as every unit must
            remaining = deadline - time.monotonic()
            time.sleep(max(0.0, min(self.delay, remaining)))
            if self.delay >= remaining:
                raise UnitUnavailable(f"unit {self.identity.unit_id}: no answer by the deadline")

    def close(self) -> None:
        self.inner.close()

"""Opening a unit never blocks past its deadline: a unit whose open hangs is a failing unit.

The key file is a FIFO here: opening the unit reads it, and the read hangs until the
test writes the key into it, as a token hangs in its login until its link is back. The
sale that meets the hung open gets a fallback receipt by the deadline, the outage opens,
the probe waits for the same open (one at a time), and once the open returns the unit
is in its place and the Sammelbeleg is signed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import REGISTER

from agent.errors import UnitUnavailable
from agent.receipts import ReceiptService
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry, UnopenedUnit
from factories import sale

T = TypeVar("T")
DEADLINE = 0.5  # sign_timeout_s, and the deadline of opening the unit


def _in_time(fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, run on a daemon thread: a call that hangs fails the test instead of
    hanging the test run."""
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(fn())
        except Exception as exc:  # raised again in the test's thread
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        return outcome.result(timeout)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"still waiting after {timeout} s")


def _hanging_key(key_file: Path) -> bytes:
    """Put a FIFO in place of ``key_file``: reading it hangs until :func:`_answer`."""
    key = key_file.read_bytes()
    key_file.unlink()
    os.mkfifo(key_file)
    return key


def _answer(key_file: Path, key: bytes) -> None:
    """Hand ``key`` to whoever is reading the FIFO ``key_file`` (nobody: nothing to do)."""
    with contextlib.suppress(OSError):  # ENXIO: no reader
        fd = os.open(key_file, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)


def _restarted(service: ReceiptService) -> ReceiptService:
    """A new service on the same database, with a registry that has opened nothing."""
    service.units.close()
    registry = UnitRegistry()
    registry.open_timeout = DEADLINE
    return ReceiptService(service.db, registry, clock=service.clock, sign_timeout=DEADLINE)


def test_a_sale_meeting_a_hung_open_gets_a_fallback_receipt_by_the_deadline(
    service: ReceiptService, unit_config: UnitConfig
) -> None:
    assert unit_config.key_file is not None
    key = _hanging_key(unit_config.key_file)
    restarted = _restarted(service)
    try:
        started = time.monotonic()
        first = _in_time(lambda: restarted.issue(sale(request_id="during-1")), 10)
        assert first.signature_state == "fallback"
        assert time.monotonic() - started < DEADLINE + 1.0
        assert restarted.outages.is_open(REGISTER)
        started = time.monotonic()  # the breaker is open: nobody waits for the open again
        second = _in_time(lambda: restarted.issue(sale(request_id="during-2")), 10)
        assert (second.signature_state, time.monotonic() - started < DEADLINE) == ("fallback", True)

        unit = restarted.unit_of(REGISTER)
        assert isinstance(unit, UnopenedUnit)
        assert "opening it has not answered" in unit.reason
        hung = unit.attempt()
        started = time.monotonic()
        with pytest.raises(UnitUnavailable, match="has not answered"):
            _in_time(lambda: unit.probe(deadline=time.monotonic() + DEADLINE), 10)
        assert time.monotonic() - started < DEADLINE + 1.0
        assert unit.attempt() is hung  # the probe waited for the open under way
    finally:
        _answer(unit_config.key_file, key)

    # the open returns: the unit is in its place, the probe passes, the Sammelbeleg is signed
    deadline = time.monotonic() + 10
    while isinstance(opened := restarted.unit_of(REGISTER), UnopenedUnit):
        assert time.monotonic() < deadline, "the unit was not put in place"
        time.sleep(0.02)
    unit.probe(deadline=time.monotonic() + 5)
    issued = restarted.recover(REGISTER)
    assert issued is not None
    assert [(r.kind, r.signature_state) for r in issued] == [("sammelbeleg", "signed")]
    assert restarted.issue(sale(request_id="after")).signature_state == "signed"
    assert restarted.unit_of(REGISTER) is opened


def test_a_hung_open_does_not_hold_the_writer(
    service: ReceiptService, unit_config: UnitConfig
) -> None:
    """While the unit's open hangs, another transaction (another register's sale, the
    outage watch) gets the writer after the deadline at most."""
    assert unit_config.key_file is not None
    key = _hanging_key(unit_config.key_file)
    restarted = _restarted(service)
    try:
        selling = threading.Thread(
            target=lambda: restarted.issue(sale(request_id="during")), daemon=True
        )
        selling.start()
        time.sleep(0.1)  # the sale holds the writer and meets the hung open

        def write() -> None:
            with restarted.db.write_connection().transaction() as conn:
                conn.execute("SELECT 1")

        started = time.monotonic()
        _in_time(write, 10)
        assert time.monotonic() - started < DEADLINE + 1.0
        selling.join(10)
        assert not selling.is_alive()
    finally:
        _answer(unit_config.key_file, key)

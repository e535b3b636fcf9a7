"""A network job counts as printed only once the printer's side has taken every byte.

Real TCP servers on 127.0.0.1 play printers that read everything, read 200 bytes and
reset the connection, or close it right after accepting; the worker keeps the jobs they
dropped queued and prints them once the printer behaves.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import time
from collections.abc import Iterator

import pytest
from printing.conftest import ScriptedPrinter

from agent.errors import PrinterError
from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.printing.transport import INTERRUPTED_NOTICE
from agent.receipts import ReceiptService
from factories import sale

JOB = bytes(range(256)) * 2 + b"\n" * 24  # 536 bytes, the size of the audit's jobs


@pytest.fixture(name="loopback")
def _loopback() -> Iterator[list[ScriptedPrinter]]:
    started: list[ScriptedPrinter] = []
    yield started
    for printer in started:
        printer.stop()


def _printer(started: list[ScriptedPrinter], mode: str) -> ScriptedPrinter:
    printer = ScriptedPrinter(mode)
    started.append(printer)
    return printer


def test_a_printer_that_reads_everything_gets_the_job_quickly(
    loopback: list[ScriptedPrinter],
) -> None:
    server = _printer(loopback, "read")
    printer = NetworkPrinter("127.0.0.1", server.port, timeout=2.0)
    started = time.monotonic()
    for _ in range(20):
        printer.send(JOB)
    assert time.monotonic() - started < 1.0  # no waiting beyond the printer's close
    assert server.jobs == [JOB] * 20


@pytest.mark.parametrize("mode", ["reset", "close"])
def test_a_job_the_printer_dropped_is_a_printer_error(
    loopback: list[ScriptedPrinter], mode: str
) -> None:
    """Reading 200 bytes and resetting, or closing at once: every job fails (before the
    fix 17 of 20 such jobs counted as sent once the kernel had buffered them)."""
    server = _printer(loopback, mode)
    printer = NetworkPrinter("127.0.0.1", server.port, timeout=2.0)
    for _ in range(10):
        with pytest.raises(PrinterError, match=f"printer 127.0.0.1:{server.port}: "):
            printer.send(JOB)
    assert server.connections == 10


@pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQ is Linux only")
def test_bytes_the_printer_never_acknowledges_fail_within_the_timeout() -> None:
    """A printer that accepts but never reads: the kernel buffers a small job, whose
    bytes beyond the printer's receive window stay unacknowledged: a failure."""
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.bind(("127.0.0.1", 0))
        stalled.listen()  # never accepted: the kernel completes the handshake alone
        printer = NetworkPrinter("127.0.0.1", stalled.getsockname()[1], timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PrinterError, match=r"bytes not acknowledged within 0\.5 s"):
            printer.send(b"\x00" * 200_000)  # fits our send buffer, not its window
        assert time.monotonic() - started < 2.0


def _states(service: ReceiptService) -> list[tuple[int, str, int]]:
    with sqlite3.connect(service.db.path) as conn:
        rows = conn.execute("SELECT number, state, attempts FROM print_jobs ORDER BY number")
        return [tuple(r) for r in rows]


def test_the_worker_keeps_dropped_jobs_queued_and_prints_them_once_the_printer_behaves(
    service: ReceiptService, loopback: list[ScriptedPrinter]
) -> None:
    server = _printer(loopback, "reset")
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", server.port, timeout=2.0), retry_s=0)
    results = [service.issue(sale(request_id=f"r{i}")) for i in range(3)]
    for _ in range(5):
        assert worker.run_once() == 0
    status = worker.status()
    assert status.state == "offline"
    assert status.queued == 3
    assert status.last_error is not None
    assert status.last_error.startswith(f"printer 127.0.0.1:{server.port}: ")
    assert "printed" not in {state for _, state, _ in _states(service)}

    server.mode = "read"  # the printer behaves again
    assert worker.run_once() == 3
    assert worker.run_once() == 0  # printed once, not again
    # the reset printer read (printed) the start of receipt 2: its retry voids that first
    jobs = [render_escpos(r) for r in results]
    assert server.jobs == [INTERRUPTED_NOTICE + jobs[0], *jobs[1:]]
    assert worker.status().state == "ready"
    assert [state for _, state, _ in _states(service)] == ["skipped"] + ["printed"] * 3

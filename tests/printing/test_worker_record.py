"""A job the printer took is sent once, even when its record cannot be stored (a locked
or read-only till database): only the record is retried."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator

import pytest
from printing.conftest import FakePrinter

from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.receipts import ReceiptService
from factories import sale

REGISTER = "KASSE-1"


class _FailsAfterSend:
    """A printer that takes the job and then breaks the till database's writes (once)."""

    def __init__(self, printer: NetworkPrinter, fail: Callable[[], None]) -> None:
        self.printer, self.fail, self.failed = printer, fail, False

    def send(self, data: bytes) -> None:
        self.printer.send(data)
        if not self.failed:
            self.failed = True
            self.fail()

    def close(self) -> None:
        self.printer.close()


@pytest.fixture(name="breakage", params=["locked", "read-only"])
def _breakage(
    request: pytest.FixtureRequest, service: ReceiptService
) -> Iterator[tuple[Callable[[], None], Callable[[], None]]]:
    """How the database's writes fail after the printer took a job, and how they heal:
    another connection holds the write lock (an operator's sqlite3 shell; the worker's
    busy timeout is cut to 50 ms), or the write connection is read-only
    (``query_only``: SQLITE_READONLY, as after a read-only remount)."""
    writer = service.db.write_connection()._conn
    holder = sqlite3.connect(service.db.path, isolation_level=None)
    if request.param == "locked":
        writer.execute("PRAGMA busy_timeout = 50")
        yield (lambda: holder.execute("BEGIN IMMEDIATE"), lambda: holder.execute("ROLLBACK"))
    else:
        yield (
            lambda: writer.execute("PRAGMA query_only = ON"),
            lambda: writer.execute("PRAGMA query_only = OFF"),
        )
    writer.execute("PRAGMA busy_timeout = 5000")
    holder.close()


def _jobs(service: ReceiptService) -> list[tuple[int, str, bytes]]:
    with sqlite3.connect(service.db.path) as conn:
        rows = conn.execute("SELECT number, state, data FROM print_jobs WHERE copy = 0")
        return [(n, s, bytes(d)) for n, s, d in rows if n > 1]  # after the Startbeleg


class TestARecordThatCannotBeStored:
    def test_the_printer_gets_the_receipt_once_and_the_record_follows(
        self,
        service: ReceiptService,
        fake_printer: FakePrinter,
        breakage: tuple[Callable[[], None], Callable[[], None]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The printer took receipt 2, then writes fail: it is never sent again and
        receipt 3 waits; once the database takes writes, 2 is recorded (its bytes
        dropped) and 3 printed. One ERROR, the recovery at INFO."""
        caplog.set_level(logging.INFO, logger="agent.print_worker")
        fail, heal = breakage
        network = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
        worker = PrintWorker(service, _FailsAfterSend(network, fail), retry_s=0)
        two, three = (service.issue(sale(request_id=r)) for r in ("two", "three"))
        assert worker.run_once() == 1
        for _ in range(5):
            assert worker.run_once() == 0
        assert fake_printer.wait_for(1) == [render_escpos(two)]
        assert [state for _, state, _ in _jobs(service)] == ["queued", "queued"]

        heal()
        assert worker.run_once() == 1  # the record of 2, then 3 sent
        assert fake_printer.wait_for(2) == [render_escpos(two), render_escpos(three)]
        assert worker.run_once() == 0
        assert fake_printer.jobs == [render_escpos(two), render_escpos(three)]
        assert _jobs(service) == [(2, "printed", b""), (3, "printed", b"")]
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert f"the printer took receipt {REGISTER} 2, but recording that failed" in (
            error.getMessage()
        )
        info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert info == ["the printed jobs are recorded again; none was sent twice"]

    def test_after_a_restart_at_most_that_one_receipt_prints_again(
        self,
        service: ReceiptService,
        fake_printer: FakePrinter,
        breakage: tuple[Callable[[], None], Callable[[], None]],
    ) -> None:
        """The process ends before the record is stored: the next one sends that job
        once more (at least once, never lost) and records it."""
        fail, heal = breakage
        network = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
        gone = PrintWorker(service, _FailsAfterSend(network, fail), retry_s=0)
        receipt = service.issue(sale(request_id="restart"))
        assert gone.run_once() == 1
        heal()
        assert PrintWorker(service, network).run_once() == 1
        assert fake_printer.wait_for(2) == [render_escpos(receipt)] * 2
        assert _jobs(service) == [(2, "printed", b"")]

    def test_the_record_is_retried_with_backoff_up_to_the_retry_interval(
        self, service: ReceiptService, fake_printer: FakePrinter
    ) -> None:
        """While the record fails, a pass tries it again only after 1, 2, 4 ... seconds
        (at most ``retry_s``): a locked database is not hammered."""
        holder = sqlite3.connect(service.db.path, isolation_level=None)
        service.db.write_connection()._conn.execute("PRAGMA busy_timeout = 10")
        network = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
        fails = _FailsAfterSend(network, lambda: holder.execute("BEGIN IMMEDIATE"))
        worker = PrintWorker(service, fails, retry_s=2.0)
        service.issue(sale(request_id="backoff"))
        tries: list[str] = []
        conn = service.db.write_connection()._conn
        conn.set_trace_callback(tries.append)
        try:
            start = time.monotonic()
            worker.run_once()  # sent; the record fails, next try after 1 s
            while time.monotonic() - start < 4.5:  # the next try comes at 5 s
                worker.run_once()
                time.sleep(0.05)
        finally:
            conn.set_trace_callback(None)
            holder.execute("ROLLBACK")
            holder.close()
        # the job's creation, then the record at 0, 1 and 3 s (the wait doubled to 2 s, the cap)
        assert tries.count("BEGIN IMMEDIATE") == 4
        assert len(fake_printer.jobs) == 1

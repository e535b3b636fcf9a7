"""What the print worker says: its status without a printer, and its log lines when the
printer or the storage fails and recovers (once per failure run, not per retry)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from printing.conftest import FakePrinter

from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, NullPrinter
from agent.receipts import ReceiptService
from factories import sale


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _records(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


def test_without_a_printer_the_status_says_disabled(service: ReceiptService) -> None:
    worker = PrintWorker(service, NullPrinter())
    service.issue(sale(request_id="n"))
    worker.run_once()
    status = worker.status()
    assert (status.state, status.queued, status.last_error) == ("disabled", 0, None)


def test_a_printer_failure_is_logged_once_per_run_and_its_recovery_at_info(
    service: ReceiptService,
    fake_printer: FakePrinter,
    free_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.print_worker")
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", free_port, timeout=0.5), retry_s=0)
    service.issue(sale(request_id="a"))
    for _ in range(3):  # three retries, one failure run
        worker.run_once()
    [warning] = _records(caplog, "agent.print_worker", logging.WARNING)
    assert f"127.0.0.1:{free_port}" in warning
    assert _records(caplog, "agent.print_worker", logging.INFO) == []

    worker.printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
    assert worker.run_once() == 1
    [recovered] = _records(caplog, "agent.print_worker", logging.INFO)
    assert recovered.startswith("printer recovered")
    assert f"127.0.0.1:{free_port}" in recovered  # the error it recovered from

    worker.printer = NetworkPrinter("127.0.0.1", free_port, timeout=0.5)  # a second run
    service.issue(sale(request_id="b"))
    worker.run_once()
    worker.run_once()
    assert len(_records(caplog, "agent.print_worker", logging.WARNING)) == 2


def test_a_storage_failure_in_the_printer_loop_is_logged_once_per_run(
    service: ReceiptService, caplog: pytest.LogCaptureFixture
) -> None:
    """Kind ``none`` and a full database (real SQLite: ``max_page_count`` reached): the
    loop retries quickly, but the ERROR (one line, no traceback) appears once, not per
    retry, and the recovery once at INFO."""
    caplog.set_level(logging.DEBUG, logger="agent.loop")
    worker = PrintWorker(service, NullPrinter())
    for i in range(150):  # their skipped jobs need more pages than the database has left
        service.issue(sale(request_id=f"full-{i}"))
    raw = service.db.write_connection()._conn
    pages = raw.execute("PRAGMA page_count").fetchone()[0]
    assert raw.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages
    worker._loop.error_wait = worker._loop.max_wait = 0.01
    worker.start()
    try:
        assert _wait_until(
            lambda: len([r for r in caplog.records if r.levelno == logging.DEBUG]) >= 10
        ), "the loop did not retry"
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert error.name == "agent.loop"
        assert error.getMessage().startswith("printer loop failed")
        assert error.exc_info is None  # a storage failure says what failed in one line
        assert "full" in error.getMessage()
        assert worker.status().state == "disabled"

        raw.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert _wait_until(lambda: bool(_records(caplog, "agent.loop", logging.INFO)))
    finally:
        worker.stop()
    assert _records(caplog, "agent.loop", logging.INFO) == ["printer loop recovered"]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1

"""A backlog behind a slow printer: the print worker reports progress after every job
(the service watchdog hears of it) and bounds a pass by time, coming back at once for
the rest."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from printing.conftest import ScriptedPrinter

from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.receipts import ReceiptService
from factories import sale

PAPER_S = 0.3  # what the slow printer takes per job


@pytest.fixture(name="slow_printer")
def _slow_printer() -> Iterator[ScriptedPrinter]:
    """A printer that takes :data:`PAPER_S` per job."""
    printer = ScriptedPrinter(paper_s=PAPER_S)
    yield printer
    printer.stop()


class TestABacklogBehindASlowPrinter:
    def test_progress_is_reported_after_every_job_rendered_and_sent(
        self, service: ReceiptService, slow_printer: ScriptedPrinter
    ) -> None:
        """The watchdog hears of every job, not only of the pass: here each beat notes
        how many jobs the printer had then (five rendered, five sent, the pass's end)."""
        heard: list[int] = []
        printer = NetworkPrinter("127.0.0.1", slow_printer.port, timeout=2.0)
        worker = PrintWorker(
            service, printer, on_progress=lambda: heard.append(len(slow_printer.jobs))
        )
        results = [service.issue(sale(request_id=f"b{i}")) for i in range(5)]
        assert worker.run_once() == 5
        assert heard == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 5]
        assert slow_printer.jobs == [render_escpos(r) for r in results]

    def test_a_pass_starts_no_job_after_its_time_and_the_loop_comes_back_at_once(
        self, service: ReceiptService, slow_printer: ScriptedPrinter
    ) -> None:
        """Six jobs of 0.3 s and passes of 0.5 s: each pass ends after its second job at
        the latest, the loop asks for no wait while jobs are left, and every receipt is
        printed once, in order."""
        printer = NetworkPrinter("127.0.0.1", slow_printer.port, timeout=2.0)
        worker = PrintWorker(service, printer, retry_s=30.0, pass_s=0.5)
        results = [service.issue(sale(request_id=f"t{i}")) for i in range(6)]
        waits, sent = [], []
        while len(slow_printer.jobs) < len(results) and len(waits) < 10:
            before = len(slow_printer.jobs)
            waits.append(worker._step())
            sent.append(len(slow_printer.jobs) - before)
        assert len(waits) >= 3
        assert all(1 <= n <= 2 for n in sent), sent
        assert waits == [0.0] * (len(waits) - 1) + [30.0]
        assert slow_printer.jobs == [render_escpos(r) for r in results]
        assert worker.run_once() == 0

    def test_stopping_ends_the_pass_after_the_job_being_sent(
        self, service: ReceiptService, slow_printer: ScriptedPrinter
    ) -> None:
        """SIGTERM during a backlog: the worker stops after the job in hand, which is
        recorded; the rest stays queued and the next start prints each of them once."""
        printer = NetworkPrinter("127.0.0.1", slow_printer.port, timeout=2.0)
        worker = PrintWorker(service, printer, pass_s=60.0)
        results = [service.issue(sale(request_id=f"s{i}")) for i in range(8)]
        worker.start()
        deadline = time.monotonic() + 10
        while not slow_printer.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop()
        done = len(slow_printer.jobs)
        assert 1 <= done < len(results)
        states = [state for _, state in _states(service)]
        assert states == ["printed"] * done + ["queued"] * (len(results) - done)
        assert PrintWorker(service, printer).run_once() == len(results) - done
        assert slow_printer.jobs == [render_escpos(r) for r in results]


def _states(service: ReceiptService) -> list[tuple[int, str]]:
    with sqlite3.connect(service.db.path) as conn:
        query = "SELECT number, state FROM print_jobs WHERE copy = 0 AND number > 1 ORDER BY id"
        return [(int(n), str(s)) for n, s in conn.execute(query)]

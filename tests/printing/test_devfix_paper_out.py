"""A network printer out of paper: it stops reading mid-job and reads again once refilled.

A real TCP server on 127.0.0.1 plays the printer. Out of paper, it has accepted the job's
connection but reads nothing: its small receive buffer (4 KiB) fills, the TCP window
closes and the agent gives up (bytes not acknowledged). Refilled, it reads the stalled
connection first, printing what it reads as it reads it, then the next one. Before the
fix the agent closed the failed connection normally, so the kernel delivered the rest of
the job once the window opened, and the retry delivered it again: two originals. Now the
failed attempt is reset: the printer prints only what it had taken, a broken receipt,
and the retry starts with a notice that voids it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from agent.errors import PrinterError
from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.printing.transport import INTERRUPTED_NOTICE
from agent.receipts import ReceiptService
from factories import sale

# 200 lines wrap to a job of about 20 KiB: far more than the printer's receive buffer
LONG_SALE = sale(
    request_id="long",
    lines=[
        {
            "text": f"Artikel {n:03d} mit einem recht langen Namen",
            "qty": "1",
            "unit_price": "1.00",
            "vat": "normal",
        }
        for n in range(200)
    ],
    payments=[{"method": "cash", "amount": "200.00"}],
)


class PaperOutPrinter:
    """A raw TCP printer that takes one connection at a time and prints what it reads
    (:attr:`paper`, everything read from every connection, in order). While
    :attr:`has_paper` is clear it accepts the next connection but reads nothing."""

    def __init__(self) -> None:
        self.has_paper = threading.Event()
        self.has_paper.set()
        self._paper = bytearray()
        self._endings: list[str] = []  # per connection: "closed" or "reset"
        self._changed = threading.Condition()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted ones too
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def paper(self) -> bytes:
        with self._changed:
            return bytes(self._paper)

    def wait_for(self, connections: int, timeout: float = 10.0) -> list[str]:
        """How the first ``connections`` connections ended, once they have."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self._endings) >= connections, timeout)
            return self._endings[:connections]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                self.has_paper.wait()
                ending = self._print(conn)
            with self._changed:
                self._endings.append(ending)
                self._changed.notify_all()

    def _print(self, conn: socket.socket) -> str:
        try:
            while chunk := conn.recv(4096):
                with self._changed:
                    self._paper += chunk
        except ConnectionResetError:
            return "reset"
        return "closed"

    def stop(self) -> None:
        self.has_paper.set()
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


@pytest.fixture(name="printer")
def _printer() -> Iterator[PaperOutPrinter]:
    printer = PaperOutPrinter()
    yield printer
    printer.stop()


def test_a_job_stalled_by_paper_out_is_printed_once_after_the_refill(
    service: ReceiptService, printer: PaperOutPrinter
) -> None:
    """The stalled attempt fails and is aborted; the retry is the one complete print."""
    job = render_escpos(service.issue(LONG_SALE))
    assert len(job) > 16_384
    network = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0)
    printer.has_paper.clear()
    with pytest.raises(PrinterError, match=r"bytes not acknowledged within 1 s"):
        network.send(job)
    printer.has_paper.set()
    assert printer.wait_for(1) == ["reset"]  # the rest of the failed attempt never came
    network.send(job)
    assert printer.wait_for(2) == ["reset", "closed"]
    taken, retry = printer.paper.split(INTERRUPTED_NOTICE)
    assert retry == job  # the one complete print
    assert 0 < len(taken) < len(job)
    assert job.startswith(taken)  # the broken print above the notice


def test_after_the_voided_print_the_next_job_comes_alone(
    service: ReceiptService, printer: PaperOutPrinter
) -> None:
    """The notice goes once, ahead of the first job sent in full after the failure."""
    job = render_escpos(service.issue(LONG_SALE))
    network = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0)
    printer.has_paper.clear()
    with pytest.raises(PrinterError):
        network.send(job)
    printer.has_paper.set()
    network.send(job)
    network.send(b"next")
    assert printer.wait_for(3) == ["reset", "closed", "closed"]
    assert printer.paper.endswith(INTERRUPTED_NOTICE + job + b"next")
    assert printer.paper.count(INTERRUPTED_NOTICE) == 1


def test_a_job_too_large_for_the_buffers_is_aborted_too(printer: PaperOutPrinter) -> None:
    """The send itself times out (our buffers are full as well): the same reset, the same
    notice ahead of the retry."""
    job = bytes(range(256)) * (32 * 4096)  # 32 MiB: more than any socket buffer holds
    network = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0)
    printer.has_paper.clear()
    with pytest.raises(PrinterError, match="timed out"):
        network.send(job)
    printer.has_paper.set()
    assert printer.wait_for(1) == ["reset"]
    assert 0 < len(printer.paper) < 1024 * 1024  # what it had taken, not the rest
    network.send(b"retry")
    printer.wait_for(2)
    assert printer.paper.endswith(INTERRUPTED_NOTICE + b"retry")


def test_a_printer_that_took_nothing_gets_no_notice(
    printer: PaperOutPrinter, free_port: int
) -> None:
    """Nobody listening: nothing reached any paper, so nothing is voided."""
    network = NetworkPrinter("127.0.0.1", free_port, timeout=1.0)
    with pytest.raises(PrinterError, match="refused"):
        network.send(b"job")
    network.port = printer.port  # the printer is switched on
    network.send(b"job")
    printer.wait_for(1)
    assert printer.paper == b"job"


def test_the_worker_prints_each_receipt_complete_exactly_once_across_a_paper_out(
    service: ReceiptService, printer: PaperOutPrinter
) -> None:
    """Receipt 2 runs out of paper: the printer shows offline; after the refill receipt 2
    and receipt 3 each print complete exactly once, in order."""
    network = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0)
    worker = PrintWorker(service, network, retry_s=0)
    short = service.issue(sale(request_id="short"))
    assert worker.run_once() == 1
    printer.has_paper.clear()
    long = service.issue(LONG_SALE)
    assert worker.run_once() == 0
    assert worker.status().state == "offline"
    printer.has_paper.set()
    printer.wait_for(2)
    last = service.issue(sale(request_id="last"))
    assert worker.run_once() == 2
    printer.wait_for(4)
    paper = printer.paper
    jobs = [render_escpos(receipt) for receipt in (short, long, last)]
    assert [paper.count(job) for job in jobs] == [1, 1, 1]
    assert paper.startswith(jobs[0])
    assert paper.endswith(INTERRUPTED_NOTICE + jobs[1] + jobs[2])
    broken = paper[len(jobs[0]) : -len(INTERRUPTED_NOTICE + jobs[1] + jobs[2])]
    assert broken  # the start of receipt 2, voided by the notice: never a second original
    assert jobs[1].startswith(broken)

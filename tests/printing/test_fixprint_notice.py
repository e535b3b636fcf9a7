"""The DRUCK ABGEBROCHEN notice a network printer owes survives a restart and a SIGKILL.

A printer that took part of a failed job prints it: a broken receipt, which the notice
ahead of the next job voids. The notice was owed in memory only, so a restart in between
left a cut-off receipt followed by a complete one with nothing between them. Now the
print worker keeps it in a file in the data directory (``print-notice-<host>-<port>``),
written with an fsync before the failure is reported and removed once the next job was
taken. The printer is a real TCP server on loopback that runs out of paper; the print
worker runs in real processes (``notice_child.py``), the first one killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from printing.test_devfix_paper_out import LONG_SALE, PaperOutPrinter

from agent.errors import PrinterError
from agent.print_worker import PrintWorker
from agent.printing import FilePrinter, NetworkPrinter, render_escpos
from agent.printing.transport import INTERRUPTED_NOTICE, notice_file_name
from agent.receipts import ReceiptService
from factories import sale
from storage import TillDB

CHILD = Path(__file__).resolve().parent / "notice_child.py"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(name="printer")
def _printer() -> Iterator[PaperOutPrinter]:
    printer = PaperOutPrinter()
    yield printer
    printer.stop()


def _child(data_dir: Path, port: int, then: str) -> subprocess.Popen[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(port), then],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def _answer(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def test_the_notice_owed_before_a_sigkill_heads_the_next_job_after_the_restart(
    service: ReceiptService, db: TillDB, data_dir: Path, printer: PaperOutPrinter, tmp_path: Path
) -> None:
    """Receipt 2 runs out of paper in a worker that is then killed; the restarted worker
    sends the notice, then 2 in full and 3: one valid original of each on the paper."""
    PrintWorker(service, FilePrinter(tmp_path / "unused"))  # printing starts after 1
    jobs = [render_escpos(service.issue(s)) for s in (LONG_SALE, sale(request_id="short"))]
    db.close()  # the till is the children's now
    marker = data_dir / notice_file_name("127.0.0.1", printer.port)
    printer.has_paper.clear()
    first = _child(data_dir, printer.port, "hang")
    try:
        assert _answer(first) == "0 offline"
        assert marker.exists()  # before the failure was recorded
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stdout.close()  # type: ignore[union-attr]
    printer.has_paper.set()
    assert printer.wait_for(1) == ["reset"]
    broken = printer.paper
    assert 0 < len(broken) < len(jobs[0])
    with _child(data_dir, printer.port, "exit") as second:
        assert _answer(second) == "2 ready"
        assert second.wait(30) == 0
    assert printer.wait_for(3) == ["reset", "closed", "closed"]
    assert printer.paper == broken + INTERRUPTED_NOTICE + jobs[0] + jobs[1]
    assert not marker.exists()


def test_a_printer_object_made_anew_owes_the_notice_its_file_records(
    printer: PaperOutPrinter, tmp_path: Path
) -> None:
    """The file is the state: a new object (a restart) sends the notice once, then the
    file is gone and the job after comes alone."""
    marker = tmp_path / "notice"
    network = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0, notice_file=marker)
    printer.has_paper.clear()
    with pytest.raises(PrinterError, match="not acknowledged"):
        network.send(b"x" * 100_000)
    assert "took part of a failed job" in marker.read_text()
    printer.has_paper.set()
    printer.wait_for(1)
    again = NetworkPrinter("127.0.0.1", printer.port, timeout=1.0, notice_file=marker)
    again.send(b"retry")
    assert not marker.exists()
    again.send(b"next")
    printer.wait_for(3)
    assert printer.paper.endswith(INTERRUPTED_NOTICE + b"retry" + b"next")
    assert printer.paper.count(INTERRUPTED_NOTICE) == 1


def test_a_printer_that_took_nothing_leaves_no_file(free_port: int, tmp_path: Path) -> None:
    """Refused: nothing reached the paper, nothing is owed, nothing is written."""
    network = NetworkPrinter("127.0.0.1", free_port, timeout=1.0)
    network.keep_notice_in(tmp_path)
    with pytest.raises(PrinterError, match="refused"):
        network.send(b"job")
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_named_after_the_printers_address() -> None:
    assert notice_file_name("192.168.1.50", 9100) == "print-notice-192.168.1.50-9100"
    assert notice_file_name("::1", 9100) == "print-notice-__1-9100"
    assert notice_file_name("drucker.local", 9101) == "print-notice-drucker.local-9101"

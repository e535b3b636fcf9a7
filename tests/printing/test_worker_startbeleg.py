"""``PrintWorker(print_startbeleg=True)`` (``till-agent run``): a register that never had
a print job and holds only its Startbeleg is printed from its start."""

from __future__ import annotations

from printing.conftest import FakePrinter

from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.receipt_view import result_from_row
from agent.receipts import ReceiptService
from factories import sale


def test_a_lone_startbeleg_is_printed(service: ReceiptService, fake_printer: FakePrinter) -> None:
    """The Startbeleg (number 1) is printed first, then the sales."""
    printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
    worker = PrintWorker(service, printer, print_startbeleg=True)
    later = service.issue(sale(request_id="later"))
    assert worker.run_once() == 2
    startbeleg = result_from_row(service.row("KASSE-1", 1))
    assert fake_printer.wait_for(2) == [render_escpos(startbeleg), render_escpos(later)]


def test_without_it_printing_starts_after_the_last_receipt(
    service: ReceiptService, fake_printer: FakePrinter
) -> None:
    """The default (``reprint`` without a running service, the library): the Startbeleg
    issued before the worker existed is not printed."""
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0))
    later = service.issue(sale(request_id="later"))
    assert worker.run_once() == 1
    assert fake_printer.wait_for(1) == [render_escpos(later)]

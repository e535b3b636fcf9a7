"""The print worker: after the commit, never blocking or losing a receipt; reprints."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from printing.conftest import FakePrinter
from typer.testing import CliRunner

from agent.cli import app
from agent.errors import FiscalError
from agent.print_worker import PrintWorker
from agent.printing import EscposOptions, NetworkPrinter, NullPrinter, render_escpos
from agent.receipts import ReceiptService
from factories import journal_events, qr_codes, sale

REGISTER = "KASSE-1"


def test_each_committed_receipt_is_printed_once_with_its_stored_bytes(
    service: ReceiptService, fake_printer: FakePrinter, free_port: int
) -> None:
    """A job holds its bytes while it is open (every retry sends them) and none once
    printed: a reprint renders the stored receipt again."""
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", free_port, timeout=0.5), retry_s=0)
    results = [service.issue(sale(request_id=f"r{i}")) for i in range(3)]
    assert worker.run_once() == 0  # the printer is off: the jobs wait with their bytes

    def stored(where: str) -> list[bytes]:
        with sqlite3.connect(service.db.path) as conn:
            rows = conn.execute(f"SELECT data FROM print_jobs WHERE {where} ORDER BY id")
            return [bytes(r[0]) for r in rows]

    waiting = stored("state IN ('queued', 'failed')")
    worker.printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
    assert worker.run_once() == 3
    jobs = fake_printer.wait_for(3)
    assert jobs == [render_escpos(r) for r in results]
    assert jobs == waiting
    assert worker.run_once() == 0  # nothing printed twice
    assert stored("state = 'printed'") == [b""] * 3


def test_the_worker_renders_with_the_printer_models_options(
    service: ReceiptService, fake_printer: FakePrinter
) -> None:
    """A printer that numbers PC858 as 16 and has no native QR gets its own bytes."""
    options = EscposOptions(code_table=16, qr="image")
    printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
    worker = PrintWorker(service, printer, escpos=options)
    result = service.issue(sale(request_id="model"))
    assert worker.run_once() == 1
    [job] = fake_printer.wait_for(1)
    assert job == render_escpos(result, options=options)
    assert job != render_escpos(result)


def test_a_failing_printer_blocks_nothing_and_the_backlog_prints_later(
    service: ReceiptService, fake_printer: FakePrinter, free_port: int
) -> None:
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", free_port, timeout=0.5), retry_s=0)
    first = service.issue(sale(request_id="a"))
    worker.run_once()
    assert worker.status().state == "offline"
    assert worker.status().last_error is not None
    second = service.issue(sale(request_id="b"))  # receipts keep coming
    worker.run_once()
    assert len(journal_events(service.db, "printer.failed")) == 1  # once per failure streak
    assert worker.status().queued == 2
    worker.printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)  # back
    assert worker.run_once() == 2
    assert fake_printer.wait_for(2) == [render_escpos(first), render_escpos(second)]
    assert worker.status().state == "ready"
    assert len(journal_events(service.db, "printer.recovered")) == 1


def test_a_restart_prints_receipts_committed_before_their_job(
    service: ReceiptService, fake_printer: FakePrinter
) -> None:
    printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
    PrintWorker(service, printer).run_once()
    lost = service.issue(sale(request_id="a"))  # committed; the process dies before printing
    assert PrintWorker(service, printer).run_once() == 1
    assert fake_printer.wait_for(1) == [render_escpos(lost)]


def test_a_reprint_is_the_same_receipt_marked_as_a_copy(
    service: ReceiptService, fake_printer: FakePrinter
) -> None:
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0))
    result = service.issue(sale())
    worker.run_once()
    assert worker.reprint(REGISTER, result.number) == 1
    assert worker.reprint(REGISTER, result.number) == 2
    worker.run_once()
    original, copy1, copy2 = fake_printer.wait_for(3)
    assert copy1 == copy2 == render_escpos(result, copy=True)
    assert b"KOPIE" in copy1
    assert b"KOPIE" not in original
    assert result.qr.encode() in copy1


def test_without_a_printer_a_reprint_is_refused_and_nothing_is_queued(
    service: ReceiptService,
) -> None:
    """Kind ``none``: a copy is refused with a FiscalError (the API's 409), not reported
    as printed."""
    worker = PrintWorker(service, NullPrinter())
    result = service.issue(sale(request_id="none"))
    with pytest.raises(FiscalError) as refused:
        worker.reprint(REGISTER, result.number)
    assert str(refused.value) == (
        "no printer is configured ([printer] kind = none): nothing was printed"
    )
    with sqlite3.connect(service.db.path) as conn:
        assert conn.execute("SELECT count(*) FROM print_jobs WHERE copy > 0").fetchone() == (0,)


def test_reprint_and_png_preview_from_the_command_line(
    tmp_path: Path, fake_printer: FakePrinter, monkeypatch: object
) -> None:
    data = tmp_path / "data"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    run("unit", "create-software", "--id", "dev", "--data-dir", str(data))
    run("init", REGISTER, "--unit", "dev", "--data-dir", str(data))
    issued = json.loads(
        runner.invoke(
            app, ["issue", "-", "--json", "--data-dir", str(data)], input=json.dumps(sale())
        ).stdout
    )
    config = tmp_path / "till.toml"
    config.write_text(
        f'data_dir = "{data}"\n[printer]\nkind = "network"\nhost = "127.0.0.1"\n'
        f"port = {fake_printer.port}\n[printer.escpos]\ncode_table = 16\n"
    )
    assert json.loads(run("reprint", REGISTER, "2", "--config", str(config), "--json")) == {
        "register": REGISTER,
        "number": 2,
        "copy": 1,
    }
    [job] = fake_printer.wait_for(1)
    assert b"KOPIE" in job
    assert job.startswith(b"\x1b@\x1bt\x10")  # the configured ESC t number of PC858
    png = tmp_path / "receipt.png"
    run("receipts", "show", REGISTER, "2", "--png", str(png), "--data-dir", str(data))
    assert qr_codes(png) == [issued["qr"]]


def test_without_a_printer_receipts_are_recorded_as_skipped_and_nothing_is_rendered(
    service: ReceiptService,
) -> None:
    """Kind ``none``: each receipt gets an empty ``skipped`` job (so a printer configured
    later starts after them), none is queued, and a receipt does not wake the worker."""
    worker = PrintWorker(service, NullPrinter())
    for i in range(3):
        service.issue(sale(request_id=f"n{i}"))
        worker.notify()
    assert not worker._loop._wake.is_set()  # no pass per receipt
    assert worker.run_once() == 0
    with sqlite3.connect(service.db.path) as conn:
        jobs = conn.execute("SELECT number, state, data FROM print_jobs ORDER BY number")
        # the Startbeleg (1) was there before the worker; the sales are 2-4
        assert [tuple(j) for j in jobs] == [(n, "skipped", b"") for n in (1, 2, 3, 4)]
    assert worker.status().queued == 0


def test_jobs_left_open_by_an_earlier_printer_are_skipped_when_printing_is_off(
    service: ReceiptService, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A printer that failed, then ``kind = none``: its open jobs become ``skipped`` (with
    their bytes dropped) and are logged, never recorded as ``printed``."""
    failing = PrintWorker(service, NetworkPrinter("127.0.0.1", free_port, timeout=0.5))
    for i in range(2):
        service.issue(sale(request_id=f"left{i}"))
    assert failing.run_once() == 0  # the printer is off: both jobs stay open

    off = PrintWorker(service, NullPrinter())
    assert off.run_once() == 0
    with sqlite3.connect(service.db.path) as conn:
        jobs = conn.execute("SELECT number, state, data FROM print_jobs WHERE number > 1")
        assert [tuple(j) for j in jobs] == [(2, "skipped", b""), (3, "skipped", b"")]
    assert off.status().queued == 0
    assert journal_events(service.db, "printer.recovered") == []
    [line] = [r.getMessage() for r in caplog.records if "earlier printer" in r.getMessage()]
    assert "2 print job(s)" in line
    assert f"{REGISTER} 2, {REGISTER} 3" in line


def test_print_bookkeeping_never_weakens_a_receipts_commit(
    service: ReceiptService, fake_printer: FakePrinter
) -> None:
    """Print jobs commit without an fsync of their own; every statement that writes a
    receipt or a journal event still runs under ``synchronous=FULL``."""
    worker = PrintWorker(service, NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0))
    conn = service.db.write_connection()._conn
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        for i in range(3):
            service.issue(sale(request_id=f"d{i}"))
            assert worker.run_once() == 1
    finally:
        conn.set_trace_callback(None)
    level, fiscal, bookkeeping = "FULL", [], []
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            level = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}[sql.split("=")[1]]
        elif sql.startswith(("INSERT INTO receipts", "INSERT INTO journal")):
            fiscal.append(level)
        elif sql.startswith(("INSERT OR IGNORE INTO print_jobs", "UPDATE print_jobs")):
            bookkeeping.append(level)
    assert fiscal == ["FULL"] * 6  # three receipts, each with its journal event
    assert bookkeeping == ["NORMAL"] * 6  # three jobs created, three marked printed
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2

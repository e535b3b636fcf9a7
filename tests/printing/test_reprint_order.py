"""The jobs of one receipt print in order: the original first, then its copies by number.

A copy asked for before the worker had made the original's job (the receipt was just
committed, a pass was cut short, or the process died in between) was queued ahead of
it, and the printer, in the order jobs were queued, printed the copy first. The printer
here is a real TCP server on loopback.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
from printing.conftest import FakePrinter, ScriptedPrinter
from service.conftest import quiet_config
from typer.testing import CliRunner

from agent.cli import app
from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos
from agent.printing import jobs as print_jobs
from agent.printing.transport import INTERRUPTED_NOTICE
from agent.receipts import ReceiptService
from agent.service import TillService
from agent.signing.registry import UnitRegistry
from factories import sale
from storage import open_till_db

REGISTER = "KASSE-1"


def _printer(port: int) -> NetworkPrinter:
    return NetworkPrinter("127.0.0.1", port, timeout=2.0)


def _open_jobs(service: ReceiptService) -> list[tuple[int, int]]:
    """(number, copy) of the open jobs, in the order the worker sends them."""
    with sqlite3.connect(service.db.path) as conn:
        rows = conn.execute(
            "SELECT number, copy FROM print_jobs WHERE state IN ('queued', 'failed') ORDER BY id"
        )
        return [tuple(r) for r in rows]


class TestACopyAskedForBeforeItsOriginalsJob:
    def test_prints_after_the_original_and_before_the_next_receipt(
        self, service: ReceiptService, fake_printer: FakePrinter
    ) -> None:
        """Two copies of receipt 2 asked for before any pass: 2, its copies 1 and 2,
        then receipt 3, which was queued after them."""
        worker = PrintWorker(service, _printer(fake_printer.port))
        first, second = (service.issue(sale(request_id=f"o{i}")) for i in range(2))
        assert worker.reprint(REGISTER, first.number) == 1
        assert worker.reprint(REGISTER, first.number) == 2
        assert worker.run_once() == 4
        copy = render_escpos(first, copy=True)
        assert fake_printer.wait_for(4) == [render_escpos(first), copy, copy, render_escpos(second)]

    def test_waits_for_the_printer_behind_the_original(
        self, service: ReceiptService, fake_printer: FakePrinter, free_port: int
    ) -> None:
        """The printer is off when the copy is asked for: both wait, the original first."""
        worker = PrintWorker(service, _printer(free_port), retry_s=0)
        result = service.issue(sale(request_id="off"))
        worker.reprint(REGISTER, result.number)
        assert worker.run_once() == 0
        assert _open_jobs(service) == [(result.number, 0), (result.number, 1)]
        worker.printer = _printer(fake_printer.port)  # back
        assert worker.run_once() == 2
        assert fake_printer.wait_for(2) == [
            render_escpos(result),
            render_escpos(result, copy=True),
        ]

    def test_waits_for_an_original_a_pass_cut_short_did_not_queue_yet(
        self, service: ReceiptService, fake_printer: FakePrinter
    ) -> None:
        """Passes of no time make one job each: the copy of receipt 4, asked for first,
        prints once 2, 3 and 4 have, not in the first pass."""
        worker = PrintWorker(service, _printer(fake_printer.port), pass_s=0.0)
        results = [service.issue(sale(request_id=f"c{i}")) for i in range(3)]
        worker.reprint(REGISTER, results[-1].number)
        for _ in range(4):
            assert worker.run_once() == 1
        assert worker.run_once() == 0
        expected = [render_escpos(r) for r in results] + [render_escpos(results[-1], copy=True)]
        assert fake_printer.wait_for(4) == expected

    def test_prints_after_the_original_when_the_worker_restarts_in_between(
        self, service: ReceiptService, fake_printer: FakePrinter
    ) -> None:
        """The copy is queued, the process dies before the original's job: the next
        worker queues the original ahead of the copy."""
        dying = PrintWorker(service, _printer(fake_printer.port))
        result = service.issue(sale(request_id="restart"))
        dying.reprint(REGISTER, result.number)
        assert PrintWorker(service, _printer(fake_printer.port)).run_once() == 2
        assert fake_printer.wait_for(2) == [
            render_escpos(result),
            render_escpos(result, copy=True),
        ]

    def test_prints_after_an_original_that_failed_midway_and_is_retried_after_a_restart(
        self, service: ReceiptService
    ) -> None:
        """The printer takes part of the original and resets: the retry, by a restarted
        worker, sends the notice and the original, and only then the copy."""
        printer = ScriptedPrinter("reset")
        try:
            worker = PrintWorker(service, _printer(printer.port), retry_s=0)
            result = service.issue(sale(request_id="midway"))
            worker.reprint(REGISTER, result.number)
            assert worker.run_once() == 0
            assert printer.connections == 1  # one attempt, the original's
            printer.mode = "read"
            assert PrintWorker(service, _printer(printer.port)).run_once() == 2
            assert printer.jobs == [
                INTERRUPTED_NOTICE + render_escpos(result),
                render_escpos(result, copy=True),
            ]
        finally:
            printer.stop()

    def test_queued_ahead_of_its_original_by_an_earlier_release_waits_for_it(
        self, service: ReceiptService, fake_printer: FakePrinter, free_port: int
    ) -> None:
        """A database an earlier release left with copy 1's job ahead of the original's
        and copy 2's after it (all open): the worker puts them in order when it starts,
        and one pass prints the original, then copy 1 and copy 2."""
        worker = PrintWorker(service, _printer(free_port))
        result = service.issue(sale(request_id="legacy"))
        worker.reprint(REGISTER, result.number)
        with service.db.write_connection().transaction() as conn:  # as that release did
            print_jobs.add_job(conn, REGISTER, result.number, 0, render_escpos(result))
        worker.reprint(REGISTER, result.number)
        assert _open_jobs(service) == [(result.number, c) for c in (1, 0, 2)]
        restarted = PrintWorker(service, _printer(fake_printer.port))
        assert _open_jobs(service) == [(result.number, c) for c in (0, 1, 2)]
        assert [restarted.run_once() for _ in range(2)] == [3, 0]
        copy = render_escpos(result, copy=True)
        assert fake_printer.wait_for(3) == [render_escpos(result), copy, copy]
        with sqlite3.connect(service.db.path) as conn:
            done = conn.execute(
                "SELECT copy FROM print_jobs WHERE number = ? ORDER BY done_at", (result.number,)
            )
            assert [c for (c,) in done] == [0, 1, 2]

    def test_a_full_batch_of_them_does_not_stop_the_printing(
        self, service: ReceiptService, fake_printer: FakePrinter, free_port: int
    ) -> None:
        """100 copies an earlier release queued each ahead of its original: the worker's
        batch (100 jobs) held only copies waiting for originals behind them, printed
        nothing and came back at once, for ever. Put in order at start, all 200 print,
        each original before its copy."""
        off = PrintWorker(service, _printer(free_port))
        results = [service.issue(sale(request_id=f"legacy-{i}")) for i in range(100)]
        for result in results:
            off.reprint(REGISTER, result.number)
        with service.db.write_connection().transaction() as conn:  # as that release did
            for result in results:
                print_jobs.add_job(conn, REGISTER, result.number, 0, render_escpos(result))
        worker = PrintWorker(service, _printer(fake_printer.port))
        printed = 0
        for _ in range(10):
            printed += worker.run_once()
            if printed == 200:
                break
        assert printed == 200
        originals = [render_escpos(result) for result in results]
        copies = [render_escpos(result, copy=True) for result in results]
        assert fake_printer.wait_for(200) == originals + copies  # (the copies moved behind)


def test_a_copy_asked_for_on_the_command_line_prints_after_the_original(
    tmp_path: Path, fake_printer: FakePrinter
) -> None:
    """No service runs: ``till-agent reprint`` of a receipt issued since the last print
    prints the original, then the copy (the reprint's own worker queues both)."""
    data = tmp_path / "data"
    runner = CliRunner()

    def run(*args: str, given: str | None = None) -> str:
        result = runner.invoke(app, list(args), input=given)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    run("unit", "create-software", "--id", "dev", "--data-dir", str(data))
    run("init", REGISTER, "--unit", "dev", "--data-dir", str(data))
    config = tmp_path / "till.toml"
    config.write_text(
        f'data_dir = "{data}"\n[printer]\nkind = "network"\nhost = "127.0.0.1"\n'
        f"port = {fake_printer.port}\n"
    )
    run("reprint", REGISTER, "1", "--config", str(config))  # printing starts after 1
    issued = json.loads(
        run("issue", "-", "--json", "--data-dir", str(data), given=json.dumps(sale()))
    )
    answer = json.loads(
        run("reprint", REGISTER, str(issued["number"]), "--config", str(config), "--json")
    )
    assert answer == {"register": REGISTER, "number": issued["number"], "copy": 1}
    _, original, copy = fake_printer.wait_for(3)
    assert b"KOPIE" not in original
    assert b"KOPIE" in copy
    assert issued["qr"].encode() in original


def test_a_copy_asked_for_through_the_api_behind_a_slow_printer_prints_after_the_original(
    data_dir: Path,
) -> None:
    """The local API's reprint (202) of a receipt issued while a slow printer works
    through a backlog (the worker has not reached the receipt yet): the original comes
    out first, then the copy, and every receipt once, in order."""
    printer = ScriptedPrinter(paper_s=0.4)
    network = {"kind": "network", "host": "127.0.0.1", "port": printer.port, "retry_s": 0.1}
    till = TillService(quiet_config(data_dir, printer=network, api={"port": 0}))
    try:
        till.start()
        assert till.api is not None
        token = (data_dir / "api-token").read_text().strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{till.api.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        ) as client:
            qrs = [
                client.post("/v1/receipts", json=sale(request_id=f"busy{i}")).json()["qr"]
                for i in range(5)
            ]
            asked = client.post("/v1/receipts", json=sale(request_id="asked")).json()
            answer = client.post(f"/v1/receipts/{REGISTER}/{asked['number']}/reprint")
            assert (answer.status_code, answer.json()) == (202, {"copy": 1})
            deadline = time.monotonic() + 20
            while client.get("/v1/status").json()["printer"]["queued"] and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
    finally:
        till.stop()
        printer.stop()
    mine = [b"KOPIE" in job for job in printer.jobs if asked["qr"].encode() in job]
    assert mine == [False, True]
    originals = [job for job in printer.jobs if b"KOPIE" not in job]
    assert [qr for qr in [*qrs, asked["qr"]] for job in originals if qr.encode() in job] == [
        *qrs,
        asked["qr"],
    ]


def test_a_copy_asked_for_on_the_command_line_behind_a_backlog_is_printed_before_it_says_so(
    tmp_path: Path, fake_printer: FakePrinter
) -> None:
    """No service runs and 150 receipts wait to print (more than a pass sends): the
    command printed one pass (100 jobs) and said the copy was "sent to the printer" while
    it stayed queued for the next `run`. It prints passes until the copy is out."""
    data = tmp_path / "data"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    run("unit", "create-software", "--id", "dev", "--data-dir", str(data))
    run("init", REGISTER, "--unit", "dev", "--data-dir", str(data))
    config = tmp_path / "till.toml"
    config.write_text(
        f'data_dir = "{data}"\n[printer]\nkind = "network"\nhost = "127.0.0.1"\n'
        f"port = {fake_printer.port}\n"
    )
    run("reprint", REGISTER, "1", "--config", str(config))  # printing starts after 1
    fake_printer.wait_for(1)
    db = open_till_db(data)
    try:
        registry = UnitRegistry()
        service = ReceiptService(db, registry)
        last = [service.issue(sale(request_id=f"backlog-{i}")) for i in range(150)][-1]
    finally:
        registry.close()
        db.close()
    said = run("reprint", REGISTER, str(last.number), "--config", str(config))
    assert "sent to the printer" in said
    printed = fake_printer.wait_for(152)
    assert b"KOPIE" in printed[-1]
    assert last.qr.encode() in printed[-2]

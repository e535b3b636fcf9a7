"""``TillService`` in-process: what its log says at start and which units it creates, and
what its timer reminds of."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from service.conftest import Start
from typer.testing import CliRunner

from agent.cli import app
from agent.clock import FrozenClock
from agent.config import MISSING_HEADER
from agent.service import DEV_UNIT, TillService
from agent.signing import create_software_unit
from factories import journal_events, sale


class TestStartLog:
    def test_a_unix_socket_api_names_its_path(
        self, start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`local API on ...` names the socket, not a placeholder URL, and the API answers."""
        sock = tmp_path / "api.sock"
        till = start(api={"unix_socket": sock})
        [line] = [r.getMessage() for r in caplog.records if "local API on" in r.getMessage()]
        assert line == f"local API on unix socket {sock}"
        token = (till.config.data_dir / "api-token").read_text().strip()
        transport = httpx.HTTPTransport(uds=str(sock))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(transport=transport, base_url="http://till", headers=headers) as client:
            assert client.get("/v1/status").status_code == 200

    def test_a_tcp_api_names_its_url(self, start: Start, caplog: pytest.LogCaptureFixture) -> None:
        """On TCP the line is the base URL (the end-to-end harness reads it from there),
        with the port the OS picked for ``port = 0``."""
        till = start(api={"port": 0})
        assert till.api is not None
        lines = [r.getMessage() for r in caplog.records if "local API on" in r.getMessage()]
        url = f"http://127.0.0.1:{till.api.port}"
        assert lines == [f"local API on {url} (api.port = 0: the port the OS picked)"]


def _units_and_registers(data_dir: Path) -> tuple[list[str], list[str]]:
    conn = sqlite3.connect(f"file:{data_dir / 'till.sqlite3'}?mode=ro", uri=True)
    try:
        units = [r[0] for r in conn.execute("SELECT id FROM units ORDER BY id")]
        registers = [r[0] for r in conn.execute("SELECT id FROM registers ORDER BY id")]
    finally:
        conn.close()
    return units, registers


def _cli(data_dir: Path, *args: str) -> None:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings but the one about the default backup directory on the data disk
    (test_service_backup.py)."""
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return [m for m in messages if not m.startswith("backup.dir: ")]


class TestDevelopmentUnit:
    """`run` without units configured: the development unit only where nothing else is."""

    def test_a_fresh_data_directory_gets_the_development_unit_and_kasse_1(
        self, start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The README's first command: the development unit (with its warning) and
        KASSE-1 initialized with it, ready to sell."""
        till = start()
        assert _units_and_registers(data_dir) == ([DEV_UNIT], ["KASSE-1"])
        assert any("DEVELOPMENT signature unit" in w for w in _warnings(caplog))
        assert till.backend.issue_sale(json.dumps(sale()).encode()).signature_state == "signed"

    def test_a_data_directory_set_up_with_init_gets_no_development_unit(
        self, start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
    ) -> None:
        """After `unit create-software` and `init KASSE-1`, run uses what is there: no
        unused development unit, no key files for it, no warning about it."""
        monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
        _cli(data_dir, "unit", "create-software", "--id", "dev")
        _cli(data_dir, "init", "KASSE-1", "--unit", "dev")
        caplog.clear()
        till = start()
        assert _units_and_registers(data_dir) == (["dev"], ["KASSE-1"])
        assert not list((data_dir / "keys").glob(f"{DEV_UNIT}.*"))
        assert _warnings(caplog) == []
        assert till.backend.issue_sale(json.dumps(sale()).encode()).number == 2

    def test_units_without_the_register_are_not_replaced_by_the_development_unit(
        self, start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
    ) -> None:
        """A unit of its own but no register yet: no development unit, no register made
        with it; the log says how to initialize the register."""
        monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
        _cli(data_dir, "unit", "create-software", "--id", "dev")
        caplog.clear()
        start()
        assert _units_and_registers(data_dir) == (["dev"], [])
        [warning] = _warnings(caplog)
        assert "KASSE-1" in warning
        assert "till-agent init KASSE-1 --unit" in warning
        assert "dev" in warning

    def test_a_first_start_stopped_before_the_startbeleg_goes_on_with_its_unit(
        self, start: Start, data_dir: Path, monkeypatch: Any
    ) -> None:
        """The development unit stored, then the process died before KASSE-1 existed:
        the next start initializes KASSE-1 with that unit, as the first start would have."""

        def crash(*_: object) -> None:
            raise RuntimeError("killed")

        with monkeypatch.context() as patch:
            patch.setattr(TillService, "_ensure_register", crash)
            with pytest.raises(RuntimeError, match="killed"):
                start()
        assert _units_and_registers(data_dir) == ([DEV_UNIT], [])
        start()
        assert _units_and_registers(data_dir) == ([DEV_UNIT], ["KASSE-1"])


def test_outages_close_by_the_running_watch(start: Start) -> None:
    """An outage that closes is aged by the service's watch (its configured thresholds and
    the time it has seen), not by a default one with the legal limits."""
    till = start(outage={"warn_hours": 1, "approaching_hours": 2, "exceeded_hours": 3})
    assert till.receipts.outages.watch.thresholds.exceeded_hours == 3
    assert till.receipts.outages.watch.clock is till.clock


def test_the_systemd_status_line_says_a_disabled_printer_is_disabled(start: Start) -> None:
    """``kind = "none"``: STATUS= says disabled, as /v1/status does, not ready."""
    till = start()
    assert till._status_line().endswith("printer: disabled")


def test_a_failing_timer_loop_logs_once_per_failure_run(
    start: Start, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the timers every second: one ERROR with its traceback, not one a
    second, and a line when they work again."""
    import time

    till = start(outage={"check_interval_s": 0.05})
    failures = 0

    def tick() -> None:
        nonlocal failures
        failures += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(till.receipts.outages.watch, "tick", tick)
    deadline = time.monotonic() + 10
    while failures < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    monkeypatch.undo()
    while time.monotonic() < deadline and not any(
        "timer loop recovered" in r.getMessage() for r in caplog.records
    ):
        time.sleep(0.1)
    errors = [r for r in caplog.records if r.getMessage().startswith("timer loop failed")]
    assert failures >= 3
    assert [r.levelno for r in errors if r.levelno >= logging.ERROR] == [logging.ERROR]
    assert any("timer loop recovered" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("printer", "warned"),
    [
        ({"kind": "file"}, 1),
        ({"kind": "file", "header": ["Gasthaus Zur Post"]}, 0),
        ({"kind": "none"}, 0),
    ],
    ids=["no-header", "header", "no-printer"],
)
def test_run_warns_once_at_start_without_a_header(
    start: Start, caplog: pytest.LogCaptureFixture, printer: dict[str, Any], warned: int
) -> None:
    """A printer without `[printer] header` prints receipts without the business name:
    said once at start (the config's header_warning); never without a printer."""
    start(printer=printer)
    assert [r.getMessage() for r in caplog.records].count(MISSING_HEADER) == warned


def test_run_prints_the_configured_header(start: Start) -> None:
    """`run` hands `[printer] header` to its print worker: the Startbeleg's print job
    starts with the business name (§ 132a Abs 3 BAO)."""
    import time

    till = start(printer={"kind": "file", "header": ["Gasthaus Zur Post"]})
    prints = till.config.data_dir / "prints"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(prints.glob("*")):
        time.sleep(0.05)
    jobs = [p.read_bytes() for p in prints.glob("*") if p.is_file()]
    assert jobs, "no print job was written"
    assert any(b"Gasthaus Zur Post" in job for job in jobs)


class TestCheckReminders:
    def test_the_timer_reminds_of_the_startbeleg_check_while_the_till_is_idle(
        self, start: Start, caplog: pytest.LogCaptureFixture, tmp_path: Path
    ) -> None:
        """The service's own timer, with no sale at all: the Startbeleg's check of KASSE-1
        on a configured unit (AT1) is announced (INFO); past its due date (in Vienna) the
        next tick catches up with the two-day warning and the overdue ERROR, each once."""
        key_file, cert_file = create_software_unit(tmp_path / "units", name="prod")
        unit = {"id": "prod", "kind": "software", "zda": "AT1"}
        unit |= {"key_file": key_file, "certificate_file": cert_file}
        clock = FrozenClock(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))
        till = start(clock=clock, outage={"check_interval_s": 0.1}, units=[unit])

        def alerts(count: int) -> list[tuple[object, object]]:
            deadline = time.monotonic() + 10
            while True:
                raised = [
                    (e["alert"], e["level"])
                    for e in journal_events(till.db, "alert.raised")
                    if str(e["alert"]).startswith("check-")
                ]
                if len(raised) >= count or time.monotonic() > deadline:
                    return raised
                time.sleep(0.05)

        assert alerts(1) == [("check-created", "info")]
        clock.set(dt.datetime(2026, 3, 9, 23, 0, tzinfo=dt.UTC))  # 10 March 00:00 in Vienna
        assert alerts(3) == [
            ("check-created", "info"),
            ("check-approaching", "warning"),
            ("check-overdue", "error"),
        ]
        lines = [r for r in caplog.records if r.name == "agent.checks"]
        assert [r.levelno for r in lines] == [logging.INFO, logging.WARNING, logging.ERROR]

    def test_the_first_start_on_the_development_unit_owes_no_check(
        self, start: Start, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The README's first command: KASSE-1 on the development unit is told once (INFO)
        that it is a development register needing no FinanzOnline step; eight days later
        the timer has raised no reminder."""
        clock = FrozenClock(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))
        till = start(clock=clock, outage={"check_interval_s": 0.1})
        clock.set(dt.datetime(2026, 3, 10, 10, 0, tzinfo=dt.UTC))
        time.sleep(0.5)  # several ticks of the timer
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agent.checks"]
        assert len(lines) == 1, lines
        assert lines[0][0] == logging.INFO
        said = f"KASSE-1: its Startbeleg (number 1) is signed by the development unit {DEV_UNIT}"
        assert said in lines[0][1]
        assert "a development register: it needs no FinanzOnline step" in lines[0][1]
        alerts = [e["alert"] for e in journal_events(till.db, "alert.raised")]
        assert [a for a in alerts if str(a).startswith("check-")] == []
        assert journal_events(till.db, "check.due") == []

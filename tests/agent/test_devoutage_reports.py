"""An outage of a development register owes FinanzOnline nothing: past 48 h it is still
recorded, aged and escalated, but no report (nor end report) is recorded, listed or
reminded of, and the log says once that a development register needs none. The same
outage on a production unit (the conftest's: self-signed too, AT1, another unit id) owes
its reports as before."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from conftest import REGISTER, UNIT

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch
from agent.outages import OutageRecord, load_outages
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.config import DEV_UNIT, DEV_ZDA
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, expect, journal_events, sale

DEV_REGISTER = "DEV-1"
HOUR = 3600.0
DEVELOPMENT = "a development register needs no FinanzOnline report"


@pytest.fixture(name="dev_flaky")
def _dev_flaky(service: ReceiptService, registry: UnitRegistry, tmp_path: Path) -> FlakyUnit:
    """DEV-1 on the development unit as `run` creates it (dev-uncertified, AT100), next to
    the conftest's KASSE-1; its unit wrapped so the test can switch it down."""
    key_file, cert_file = create_software_unit(tmp_path / "dev-keys", name=DEV_UNIT)
    config = UnitConfig(
        id=DEV_UNIT, kind="software", zda=DEV_ZDA, key_file=key_file, certificate_file=cert_file
    )
    add_unit(service.db, registry, config)
    service.init_register(RegisterSetup(DEV_REGISTER, [DEV_UNIT]))
    with service.db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, DEV_UNIT))
    registry.put(flaky)
    return flaky


def _outage_of(service: ReceiptService, register_id: str) -> OutageRecord:
    with service.db.read_connection() as conn:
        [outage] = load_outages(conn, register_id)
    return outage


def _down(service: ReceiptService, unit: FlakyUnit, register_id: str) -> None:
    """The register's unit fails: one fallback receipt opens its outage."""
    unit.mode = "down"
    issued = service.issue(sale(request_id=f"down-{register_id}", register=register_id))
    assert issued.signature_state == "fallback"


def _tick_hours(clock: FrozenClock, watch: OutageWatch, hours: int) -> list[str]:
    """Tick hourly for ``hours`` hours; the levels fired."""
    fired = []
    for _ in range(hours):
        clock.advance(HOUR)
        fired += [level for _, level in watch.tick()]
    return fired


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[tuple[int, str]]:
    return [(r.levelno, m) for r in caplog.records if text in (m := r.getMessage())]


class TestPastTheWindow:
    def test_the_development_register_records_no_report(
        self,
        service: ReceiptService,
        dev_flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """49 h: the outage is aged and escalated to ``exceeded`` as ever, but no report is
        due (nor journaled as due); no line says "report it in FinanzOnline", one WARNING
        says a development register needs no report."""
        caplog.set_level(logging.INFO)
        _down(service, dev_flaky, DEV_REGISTER)
        assert _tick_hours(clock, watch, 49) == ["24h", "approaching", "exceeded"]
        outage = _outage_of(service, DEV_REGISTER)
        assert outage.unit_id == DEV_UNIT
        assert outage.escalations == ("opened", "24h", "approaching", "exceeded")
        assert outage.age_seconds == pytest.approx(49 * HOUR)
        assert outage.report_due is None
        exceeded = [
            e for e in journal_events(service.db, "outage.escalation") if e["level"] == "exceeded"
        ]
        assert [e["report_due"] for e in exceeded] == [None]
        assert _lines(caplog, "report it in FinanzOnline") == []
        [(level, line)] = _lines(caplog, DEVELOPMENT)
        assert level == logging.WARNING
        assert line.startswith(f"outage 1 of register {DEV_REGISTER} has lasted 48.0 h:")
        assert f"signs with the development unit {DEV_UNIT}" in line

    def test_the_production_register_still_owes_its_report(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The same 49 h on the conftest's unit (self-signed, AT1, not the development
        unit's id): the report is due a week after the 48 h, and the ERROR says so."""
        caplog.set_level(logging.INFO)
        _down(service, flaky, REGISTER)
        start = clock.now()
        assert _tick_hours(clock, watch, 49) == ["24h", "approaching", "exceeded"]
        outage = _outage_of(service, REGISTER)
        assert outage.unit_id == UNIT != DEV_UNIT
        assert outage.report_due == (start + dt.timedelta(hours=48, days=7)).isoformat()
        [(level, _)] = _lines(caplog, "report it in FinanzOnline by 2026-03-11")
        assert level == logging.ERROR
        assert _lines(caplog, DEVELOPMENT) == []

    def test_no_overdue_reminder_nor_end_report(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        dev_flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Both units down for ten days, then back: KASSE-1 gets its ``overdue``, and its
        Sammelbeleg its ``end-report``; DEV-1 neither, and its end report is not due
        either. The development line was said once, the closed line still says "past 48 h"."""
        caplog.set_level(logging.INFO)
        _down(service, flaky, REGISTER)
        _down(service, dev_flaky, DEV_REGISTER)
        fired = _tick_hours(clock, watch, 240)
        assert fired.count("exceeded") == 2
        assert fired.count("overdue") == 1
        flaky.mode = dev_flaky.mode = "up"
        for register_id in (REGISTER, DEV_REGISTER):
            assert [r.kind for r in service.recover(register_id) or []] == ["sammelbeleg"]
        clock.advance(8 * 24 * HOUR)
        assert [level for _, level in watch.tick()] == ["end-overdue"]
        production, development = _outage_of(service, REGISTER), _outage_of(service, DEV_REGISTER)
        assert production.escalations[-3:] == ("overdue", "end-report", "end-overdue")
        assert development.escalations == ("opened", "24h", "approaching", "exceeded")
        assert (development.report_due, development.end_report_due) == (None, None)
        assert development.ended_at is not None
        assert len(_lines(caplog, DEVELOPMENT)) == 1
        reminders = [line for _, line in _lines(caplog, "FinanzOnline") if DEVELOPMENT not in line]
        assert [line for line in reminders if f"register {DEV_REGISTER} " in line] == []
        [(level, _)] = _lines(caplog, f"register {DEV_REGISTER}, unit {DEV_UNIT} signs again")
        assert level == logging.WARNING  # it lasted past 48 h


class TestTheClose:
    def test_closed_after_72_hours_unticked_owes_no_end_report(
        self,
        service: ReceiptService,
        dev_flaky: FlakyUnit,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """`outage recover` after 72 h with the agent stopped: flagged ``exceeded`` (with the
        development line) but no report and no end report recorded or logged."""
        caplog.set_level(logging.INFO)
        _down(service, dev_flaky, DEV_REGISTER)
        clock.advance(72 * HOUR)
        dev_flaky.mode = "up"
        assert [r.kind for r in service.recover(DEV_REGISTER) or []] == ["sammelbeleg"]
        outage = _outage_of(service, DEV_REGISTER)
        assert outage.escalations == ("opened", "exceeded")
        assert (outage.report_due, outage.end_report_due) == (None, None)
        assert _lines(caplog, "report its end") == []
        assert len(_lines(caplog, DEVELOPMENT)) == 1


class TestWhatIsListed:
    def test_the_status_lists_the_production_report_only(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        dev_flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
    ) -> None:
        """/v1/status after 49 h of both outages: KASSE-1 owes its outage report, DEV-1's
        `reports_due` is empty (its open outage is shown, past the window)."""
        _down(service, flaky, REGISTER)
        _down(service, dev_flaky, DEV_REGISTER)
        _tick_hours(clock, watch, 49)
        status = ServiceBackend(service).status().model_dump(mode="json")["registers"]
        owed = {r["register"]: [d["report"] for d in r["reports_due"]] for r in status}
        assert owed == {REGISTER: ["outage"], DEV_REGISTER: []}
        [development] = [r for r in status if r["register"] == DEV_REGISTER]
        assert development["open_outage"]["report_due_at"] is None

    def test_a_report_an_earlier_version_recorded_is_neither_listed_nor_reminded(
        self,
        service: ReceiptService,
        dev_flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        run: Run,
        data_dir: Path,
    ) -> None:
        """A till whose earlier version gave DEV-1's outage its report and end report dates:
        neither is in the status nor in `outage list`, and the timer reminds of neither."""
        _down(service, dev_flaky, DEV_REGISTER)
        _tick_hours(clock, watch, 49)
        dev_flaky.mode = "up"
        service.recover(DEV_REGISTER)
        with service.db.write_connection().transaction() as conn:  # as that version did
            conn.execute(
                "UPDATE outages SET report_due = ?, end_report_due = ?",
                ("2026-03-11T10:00:00+00:00", "2026-03-11T11:00:00+00:00"),
            )
        clock.advance(10 * 24 * HOUR)
        assert watch.tick() == []
        status = ServiceBackend(service).status().model_dump(mode="json")["registers"]
        assert [r["reports_due"] for r in status if r["register"] == DEV_REGISTER] == [[]]
        listed = expect(run("outage", "list", "--json", "--data-dir", data_dir), 0)
        [outage] = json.loads(listed.stdout)
        assert (outage["report_due_at"], outage["end_report_due_at"]) == (None, None)

"""A Schlussbeleg with the failure marker (``failed_ok``) and the outage it ends.

rksv.md 5 and 6: a Schlussbeleg may carry the marker. The register ends inside its outage,
which no Sammelbeleg can close: the outage ends with the Schlussbeleg, and as the failure
is no temporary one its FinanzOnline report is due within a week (or earlier: past 48 h),
with the reminders of any report; no end report is owed (the decommissioning report, the
``closing`` obligation, takes its place). A development unit's outage owes neither.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3

import pytest

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.errors import WaitsForUnit
from agent.fakes.chain_service import ChainServiceFake
from agent.outage_watch import acknowledge_report
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import db_rows, journal_events, sale, the_outage

REGISTER = "KASSE-1"
HOUR = 3600.0


def _levels(service: ReceiptService) -> list[str]:
    return [str(e["level"]) for e in journal_events(service.db, "outage.escalation")]


class TestTheOutageItEnds:
    def test_a_short_outage_is_reported_within_a_week_and_reminded_when_overdue(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """One hour old at the Schlussbeleg: ended, its report due a week later (before:
        the Schlussbeleg was refused and the outage stayed open for good); the timer's
        ``overdue`` follows after that week, no end report ever."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        clock.advance(HOUR)
        closing = service.issue_special(REGISTER, "closing", failed_ok=True)
        assert (closing.kind, closing.signature_state) == ("closing", "fallback")
        outage = the_outage(service)
        assert outage.ended_at == clock.now().isoformat()
        assert (outage.sammelbeleg_number, outage.last_number) == (None, closing.number)
        assert outage.report_due == (clock.now() + dt.timedelta(days=7)).isoformat()
        assert outage.end_report_due is None
        assert not service.outages.is_open(REGISTER)
        assert service.probe_targets() == []
        [closed] = journal_events(service.db, "outage.closed")
        assert closed == {
            "outage": outage.id,
            "sammelbeleg_number": None,
            "closing_number": closing.number,
        }
        clock.advance(7 * 24 * HOUR + 60)
        assert service.outages.watch.tick() == [(outage.id, "overdue")]
        assert service.outages.watch.tick() == []
        assert _levels(service) == ["opened", "decommissioned", "overdue"]

    def test_an_outage_past_48_hours_keeps_its_earlier_report_date(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """72 h without a tick: exceeded as it ends, the report due a week after the 48 h
        were over, not a week after the Schlussbeleg."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        start = clock.now()
        clock.advance(72 * HOUR)
        service.issue_special(REGISTER, "closing", failed_ok=True)
        outage = the_outage(service)
        assert outage.escalations == ("opened", "exceeded", "decommissioned")
        assert outage.report_due == (start + dt.timedelta(days=9)).isoformat()
        assert outage.end_report_due is None

    def test_the_log_says_what_is_owed(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO)
        flaky.mode = "down"
        service.issue_special(REGISTER, "closing", failed_ok=True)
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert any(
            level == logging.WARNING and "decommissioned inside it" in m for level, m in messages
        )
        assert any(
            level == logging.ERROR and "report it in FinanzOnline by" in m for level, m in messages
        )

    def test_a_report_recorded_already_is_not_asked_for_again(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Past 48 h, its report recorded, then the Schlussbeleg: the ``decommissioned``
        level is journaled, but logged as a WARNING that says the report is recorded
        (before: an ERROR asking for the report again)."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        clock.advance(50 * HOUR)
        service.outages.watch.tick()
        outage = the_outage(service)
        acknowledge_report(service.db.write_connection(), clock, outage.id, "FON-1")
        caplog.clear()  # (the tick's ``exceeded`` asked for it)
        caplog.set_level(logging.INFO)
        service.issue_special(REGISTER, "closing", failed_ok=True)
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert not any(level >= logging.ERROR for level, _ in messages), messages
        assert not any("report it in FinanzOnline by" in m for _, m in messages)
        assert any(
            level == logging.WARNING and "its FinanzOnline report is recorded already" in m
            for level, m in messages
        )
        assert _levels(service) == ["opened", "24h", "approaching", "exceeded", "decommissioned"]
        assert the_outage(service).report_due == outage.report_due

    def test_without_failed_ok_nothing_changes(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """The default: refused, consuming nothing, the outage open."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        with pytest.raises(WaitsForUnit, match="--failed-ok"):
            service.issue_special(REGISTER, "closing")
        assert the_outage(service).ended_at is None
        assert service.outages.is_open(REGISTER)


def test_the_status_shows_a_shared_unit_up_when_another_register_signs_on_it(
    service: ReceiptService, flaky: FlakyUnit, registry: UnitRegistry, clock: FrozenClock
) -> None:
    """KASSE-1 is decommissioned with the marker on unit ``dev``, which KASSE-2 shares;
    ``dev`` signs again for KASSE-2: the status shows it ``up`` for both (before: ``down``
    for good, from the closed register's last receipt)."""
    service.init_register(RegisterSetup("KASSE-2", ["dev"]))
    flaky.mode = "down"
    assert service.issue_special(REGISTER, "closing", failed_ok=True).signature_state == "fallback"
    flaky.mode = "up"
    again = ReceiptService(service.db, registry, clock=clock)  # the agent starts
    assert again.issue(sale(request_id="k2", register="KASSE-2")).signature_state == "signed"
    registers = ServiceBackend(again).status().registers
    assert {r.register_id: r.unit.state for r in registers} == {REGISTER: "up", "KASSE-2": "up"}


def _fail_check_inserts(service: ReceiptService, on: bool) -> None:
    """A real SQLite failure late in the Schlussbeleg's transaction (its ``closing``
    obligation is inserted after the receipt is stored), or none any more."""
    conn = sqlite3.connect(service.db.path)
    try:
        with conn:
            conn.execute(
                "CREATE TRIGGER no_checks BEFORE INSERT ON checks"
                " BEGIN SELECT RAISE(ABORT, 'the disk failed'); END"
                if on
                else "DROP TRIGGER no_checks"
            )
    finally:
        conn.close()


class TestOnAChainService:
    def test_a_failed_transaction_after_a_refusal_leaves_nothing_waiting(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        registry: UnitRegistry,
        clock: FrozenClock,
    ) -> None:
        """The service answers 503 (it signed nothing), then the transaction fails: the
        intent is void, so neither this process nor a restart makes the Schlussbeleg a
        waiting one (before: it waited for a service that may be down for good, and the
        retry with failed_ok was refused). The retry issues it with the marker."""
        chain.mode = "down"
        _fail_check_inserts(chain_service, True)
        with pytest.raises(sqlite3.IntegrityError, match="the disk failed"):
            chain_service.issue_special(REGISTER, "closing", failed_ok=True)
        _fail_check_inserts(chain_service, False)
        [last] = db_rows(
            chain_service.db, "SELECT number, kind FROM pending_signings ORDER BY id DESC LIMIT 1"
        )
        assert tuple(last) == (2, "void")
        again = ReceiptService(chain_service.db, registry, clock=clock, sign_timeout=1.5)
        assert db_rows(again.db, "SELECT kind FROM waiting_specials") == []
        closing = again.issue_special(REGISTER, "closing", failed_ok=True)
        assert (closing.number, closing.signature_state) == (2, "fallback")
        rows = db_rows(again.db, "SELECT number, kind, signature_state FROM receipts")
        assert [tuple(r) for r in rows] == [(1, "start", "signed"), (2, "closing", "fallback")]
        assert the_outage(again).ended_at is not None
        assert not again.outages.is_open(REGISTER)

    def test_a_lost_answer_still_waits(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The service may hold a Schlussbeleg whose answer was lost: it waits, failed_ok
        or not, and is sent again unchanged."""
        chain.mode = "lose_response"
        with pytest.raises(WaitsForUnit, match="sent to the chain service"):
            chain_service.issue_special(REGISTER, "closing", failed_ok=True)
        assert [r[0] for r in db_rows(chain_service.db, "SELECT kind FROM waiting_specials")] == [
            "closing"
        ]

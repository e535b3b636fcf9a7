"""Outages: circuit breaker, probe and Sammelbeleg, the 48-hour window, clock jumps."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from agent.api_backend import ServiceBackend
from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import FiscalError, InvalidSale
from agent.export import export_container, export_dep
from agent.outage_watch import OutageWatch, Thresholds, acknowledge_report
from agent.outages import OutageRecord, load_outages
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import journal_events, sale, to_closing_day
from storage import TillDB, open_till_db

REGISTER = "KASSE-1"
HOUR = 3600.0


def load_outages_of(db: TillDB) -> list[OutageRecord]:
    with db.read_connection() as conn:
        return load_outages(conn)


def _sell(service: ReceiptService, n: int) -> str:
    return service.issue(sale(request_id=f"r-{n}")).signature_state


def _verify(db: TillDB) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    return [f"{f.receipt}: {f.rule}" for f in report.findings]


def _run_for(seconds: float, clock: FrozenClock, prober: Prober, watch: OutageWatch) -> None:
    """Let the timers run for ``seconds`` (steps of 30 s, 10 min for long outages)."""
    step = 30.0 if seconds < 6 * HOUR else 600.0
    for _ in range(int(seconds // step)):
        clock.advance(step)
        prober.run_once()
        watch.tick()


class TestBreaker:
    def test_the_first_failure_opens_an_outage_and_later_receipts_skip_the_unit(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """The receipt that meets the failure falls back and opens the outage; the next ones
        fall back at once without calling the unit."""
        flaky.mode = "down"
        assert _sell(service, 1) == "fallback"
        calls = flaky.calls
        assert [_sell(service, n) for n in range(2, 6)] == ["fallback"] * 4
        assert flaky.calls == calls
        with service.db.engine.connect() as conn:
            [outage] = load_outages(conn.connection.driver_connection)  # type: ignore[arg-type]
        assert (outage.first_number, outage.last_number, outage.affected) == (2, 6, 5)
        assert outage.ended_at is None
        assert "down" in outage.cause

    def test_a_garbage_signature_opens_an_outage_and_never_reaches_the_journal(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A unit answering with a signature that does not verify is treated as failed."""
        flaky.mode = "garbage"
        assert _sell(service, 1) == "fallback"
        assert service.outages.is_open(REGISTER)

    def test_must_sign_receipts_wait_while_the_outage_is_open(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A Jahresbeleg is refused (it waits) while the unit is down; no number is used."""
        caught_up = to_closing_day(service, "yearly")
        flaky.mode = "down"
        _sell(service, 1)
        with pytest.raises(FiscalError, match="waits for the unit"):
            service.issue_special(REGISTER, "yearly")
        assert service.issue_special(REGISTER, "null").number == 3 + caught_up


class TestRecovery:
    def test_the_probe_brings_the_sammelbeleg_as_soon_as_the_unit_is_back(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        prober: Prober,
        clock: FrozenClock,
        watch: OutageWatch,
    ) -> None:
        """A 5-minute outage: probes fail while down, the first good probe issues exactly one
        signed Sammelbeleg right after the last fallback receipt, and the DEP verifies."""
        flaky.mode = "down"
        for n in range(3):
            _sell(service, n)
        _run_for(5 * 60, clock, prober, watch)
        assert service.outages.is_open(REGISTER)
        flaky.mode = "up"
        _run_for(90, clock, prober, watch)
        assert not service.outages.is_open(REGISTER)
        closing = service.get(REGISTER, 5)
        assert (closing.kind, closing.signature_state) == ("sammelbeleg", "signed")
        assert _sell(service, 9) == "signed"
        assert _verify(service.db) == []
        levels = [e["level"] for e in journal_events(service.db, "outage.escalation")]
        assert levels == ["opened"]

    def test_a_flapping_unit_gives_one_sammelbeleg_per_outage(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        prober: Prober,
        clock: FrozenClock,
        watch: OutageWatch,
    ) -> None:
        """Down, up, down, up: two outages, two Sammelbelege, a DEP that verifies."""
        for cycle in range(2):
            flaky.mode = "down"
            _sell(service, 10 * cycle)
            _run_for(60, clock, prober, watch)
            flaky.mode = "up"
            _run_for(120, clock, prober, watch)
            _sell(service, 10 * cycle + 1)
        assert len(journal_events(service.db, "outage.closed")) == 2
        assert _verify(service.db) == []

    def test_a_restart_in_the_middle_of_an_outage_continues_it(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        tmp_path: Path,
        registry: UnitRegistry,
    ) -> None:
        """After a restart the outage is still open (breaker included) and recovery issues
        exactly one Sammelbeleg."""
        flaky.mode = "down"
        _sell(service, 1)
        data_dir = service.db.path.parent
        service.db.close()
        db = open_till_db(data_dir)
        try:
            again = ReceiptService(db, registry, clock=clock)
            assert again.outages.is_open(REGISTER)
            assert _sell(again, 2) == "fallback"
            flaky.mode = "up"
            prober = Prober(again, Backoff(initial=1.0, jitter=0.0))
            prober.run_once()
            clock.advance(2)
            prober.run_once()
            assert again.recover(REGISTER) == []  # already closed: no second Sammelbeleg
            assert len(journal_events(db, "outage.closed")) == 1
            assert _verify(db) == []
        finally:
            db.close()

    def test_a_zero_receipt_asked_as_the_probe_recovers_is_a_nullbeleg(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """POST /v1/registers/ID/zero-receipt while the probe's recovery issues the
        Sammelbeleg: the kind is decided in the transaction that issues it, so the operator
        gets a Nullbeleg, not a second Sammelbeleg after the outage has closed."""
        flaky.mode = "down"
        _sell(service, 1)
        flaky.mode = "up"
        backend = ServiceBackend(service)
        answers: list[ReceiptResult] = []
        with service._issuing.lock:  # the recovery's write transaction is under way
            asking = threading.Thread(
                target=lambda: answers.append(backend.zero_receipt(REGISTER).result)
            )
            asking.start()
            time.sleep(0.2)  # the request arrived and waits for the writer
            recovered = service.recover(REGISTER)
        asking.join(10)
        assert [r.kind for r in recovered or []] == ["sammelbeleg"]
        assert [(r.kind, r.number) for r in answers] == [("null", recovered[0].number + 1)]  # type: ignore[index]
        assert not service.outages.is_open(REGISTER)
        assert _verify(service.db) == []


class TestWindow:
    @pytest.mark.parametrize(
        ("hours", "levels"),
        [
            (0.1, ["opened"]),
            (47, ["opened", "24h", "approaching"]),
            (49, ["opened", "24h", "approaching", "exceeded"]),
            (9 * 24, ["opened", "24h", "approaching", "exceeded", "overdue"]),
        ],
    )
    def test_escalations_fire_on_time_without_any_receipt(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        prober: Prober,
        watch: OutageWatch,
        hours: float,
        levels: list[str],
    ) -> None:
        """The timer ages the outage while the till is idle and journals each level once."""
        flaky.mode = "down"
        _sell(service, 1)
        start = clock.now()
        _run_for(hours * HOUR, clock, prober, watch)
        escalations = journal_events(service.db, "outage.escalation")
        assert [e["level"] for e in escalations] == levels
        if "exceeded" in levels:
            due = next(e["report_due"] for e in escalations if e["level"] == "exceeded")
            assert (
                str(due)[:10]
                == (start.date() + __import__("datetime").timedelta(days=9)).isoformat()
            )
        flaky.mode = "up"
        _run_for(120, clock, prober, watch)
        assert _verify(service.db) == []

    def test_an_acknowledged_report_stops_the_escalation(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        prober: Prober,
        watch: OutageWatch,
    ) -> None:
        """With the report recorded before the week is over, no 'overdue' follows."""
        flaky.mode = "down"
        _sell(service, 1)
        _run_for(50 * HOUR, clock, prober, watch)
        acknowledge_report(service.db.write_connection(), clock, 1, "FON-4711")
        _run_for(8 * 24 * HOUR, clock, prober, watch)
        levels = [e["level"] for e in journal_events(service.db, "outage.escalation")]
        assert "overdue" not in levels
        assert journal_events(service.db, "outage.reported")[0]["reference"] == "FON-4711"

    @pytest.mark.parametrize(
        ("reference", "rule"),
        [(" ", "required"), ("F" * 201, "max-length"), ("FON-1\r\nFON-2", "format")],
    )
    def test_a_bad_report_reference_is_refused_and_not_journaled(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        reference: str,
        rule: str,
    ) -> None:
        """The reference is evidence kept for good: 1-200 printable characters."""
        flaky.mode = "down"
        _sell(service, 1)
        with pytest.raises(InvalidSale) as refused:
            acknowledge_report(service.db.write_connection(), clock, 1, reference)
        assert (refused.value.field, refused.value.rule) == ("reference", rule)
        assert journal_events(service.db, "outage.reported") == []

    def test_an_end_report_before_the_report_is_refused(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """Field ``end`` (the API's body field, the CLI's --end), rule report-first."""
        flaky.mode = "down"
        _sell(service, 1)
        with pytest.raises(InvalidSale) as refused:
            acknowledge_report(service.db.write_connection(), clock, 1, "FON-2", end=True)
        assert (refused.value.field, refused.value.rule) == ("end", "report-first")
        assert journal_events(service.db, "outage.reported") == []

    def test_an_end_report_while_the_outage_is_open_is_refused(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        prober: Prober,
        watch: OutageWatch,
    ) -> None:
        """Rule outage-ended: the end (Wiederinbetriebnahme) is reported once the signed
        Sammelbeleg closed the outage, not while the till still issues fallback receipts."""
        flaky.mode = "down"
        _sell(service, 1)
        writer = service.db.write_connection()
        acknowledge_report(writer, clock, 1, "FON-1")
        with pytest.raises(InvalidSale) as refused:
            acknowledge_report(writer, clock, 1, "FON-2", end=True)
        assert (refused.value.field, refused.value.rule) == ("end", "outage-ended")
        assert [e["end"] for e in journal_events(service.db, "outage.reported")] == [False]
        flaky.mode = "up"
        _run_for(120, clock, prober, watch)
        assert not service.outages.is_open(REGISTER)
        acknowledge_report(writer, clock, 1, "FON-2", end=True)
        assert [e["end"] for e in journal_events(service.db, "outage.reported")] == [False, True]

    @pytest.mark.parametrize("jump_hours", [72, -72])
    def test_a_clock_jump_is_journaled_and_neither_fakes_nor_swallows_escalations(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        jump_hours: float,
    ) -> None:
        """A 3-day jump of the wall clock is recorded; the age follows the monotonic clock."""
        flaky.mode = "down"
        _sell(service, 1)
        watch.tick()
        clock.jump(jump_hours * HOUR)
        clock.advance(60)
        watch.tick()
        assert [e["level"] for e in journal_events(service.db, "outage.escalation")] == ["opened"]
        [jump] = journal_events(service.db, "clock.jump")
        assert abs(float(jump["delta_seconds"]) - jump_hours * HOUR) < 1
        clock.advance(25 * HOUR)
        watch.tick()
        assert "24h" in [e["level"] for e in journal_events(service.db, "outage.escalation")]

    @pytest.mark.parametrize("then", ["tick", "recover"])
    def test_a_jump_between_the_opening_and_the_next_look_fakes_no_age(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, then: str
    ) -> None:
        """The timer has been ticking; an outage opens; 20 s later NTP moves the wall clock
        +49 h. The next tick (or the Sammelbeleg's recovery) ages it by the boot clock:
        no 24h/exceeded level, no report due, for an outage of seconds."""
        watch = service.outages.watch
        watch.tick()
        clock.advance(30)
        watch.tick()
        flaky.mode = "down"
        _sell(service, 1)
        clock.advance(20)
        clock.jump(49 * HOUR)
        if then == "tick":
            watch.tick()
        else:
            flaky.mode = "up"
            assert [r.kind for r in service.recover(REGISTER) or []] == ["sammelbeleg"]
        [outage] = load_outages_of(service.db)
        assert outage.age_seconds < 60
        assert (outage.escalations, outage.report_due, outage.end_report_due) == (
            ("opened",),
            None,
            None,
        )

    def test_thresholds_are_configurable(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """A shorter window escalates earlier."""
        watch = OutageWatch(
            service.db.write_connection(),
            clock,
            Thresholds(warn_hours=1, approaching_hours=2, exceeded_hours=3),
        )
        flaky.mode = "down"
        _sell(service, 1)
        for _ in range(4 * 60):
            clock.advance(60)
            watch.tick()
        levels = [e["level"] for e in journal_events(service.db, "outage.escalation")]
        assert levels == ["opened", "24h", "approaching", "exceeded"]

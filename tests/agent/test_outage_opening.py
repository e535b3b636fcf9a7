"""An outage is opened by the first failed signing or probe (DESIGN.md invariant 4), also
when that signing was of a receipt that must be signed and waits (nothing is stored), and
when only a probe meets the dead unit; its signed Sammelbeleg closes it."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.errors import InvalidSale
from agent.export import export_container, export_dep
from agent.outages import OutageRecord, load_outages
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from agent.waiting import record_waiting
from factories import journal_events, sale, to_closing_day
from storage import TillDB

REGISTER = "KASSE-1"
HOUR = 3600.0
YEAR_END = dt.datetime(2026, 12, 31, 22, 59, 10, tzinfo=dt.UTC)  # 23:59:10 in Vienna


def _findings(db: TillDB, register: str = REGISTER) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, register, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, register)))
    return [f"{f.receipt}: {f.rule}" for f in report.findings]


def _outages(service: ReceiptService) -> list[OutageRecord]:
    with service.db.read_connection() as conn:
        return load_outages(conn)


def _prober(service: ReceiptService) -> Prober:
    return Prober(service, Backoff(initial=0.0, cap=0.0, jitter=0.0))


def _hours(service: ReceiptService, clock: FrozenClock, prober: Prober, hours: int) -> None:
    for _ in range(hours):
        clock.advance(HOUR)
        service.outages.watch.tick()
        prober.run_once()


class TestAJahresbelegThatMeetsTheFailure:
    def test_it_opens_the_outage_that_ages_and_its_sammelbeleg_closes(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        registry: UnitRegistry,
    ) -> None:
        """The year ends with the unit dead: the Jahresbeleg waits and the outage opens
        (durably: a restart sees it); 73 h of failed probes escalate it past 48 h with a
        report due; back, the Sammelbeleg closes it and the Jahresbeleg follows."""
        to_closing_day(service, "yearly")  # March to November closed, the unit up
        service.issue(sale(request_id="a"))
        flaky.mode = "down"
        clock.set(YEAR_END)
        service.run_closings()
        assert [w["kind"] for w in service.waiting()] == ["yearly"]
        [outage] = _outages(service)
        assert (outage.ended_at, outage.first_number, outage.affected) == (None, None, 0)
        assert "down" in outage.cause
        service = ReceiptService(service.db, registry, clock=clock)  # a restart
        assert service.outages.is_open(REGISTER)
        prober = _prober(service)
        _hours(service, clock, prober, 73)
        [outage] = _outages(service)
        assert {"24h", "exceeded"} <= set(outage.escalations)
        assert outage.report_due is not None
        assert outage.probe_attempts >= 73
        flaky.mode = "up"
        _hours(service, clock, prober, 1)
        assert service.waiting() == []
        kinds = [(r.kind, r.signature_state) for r in _receipts(service)]
        assert kinds[-2:] == [("sammelbeleg", "signed"), ("yearly", "signed")]
        [outage] = _outages(service)
        assert outage.sammelbeleg_number == kinds.index(("sammelbeleg", "signed")) + 1
        assert outage.end_report_due is not None
        assert _findings(service.db) == []


def _receipts(service: ReceiptService) -> list[object]:
    with service.db.read_connection() as conn:
        last = conn.execute("SELECT last_number FROM registers WHERE id = ?", (REGISTER,))
        count = int(last.fetchone()[0])
    return [service.get(REGISTER, n) for n in range(1, count + 1)]


class TestAFailedProbe:
    def test_of_a_register_that_waits_opens_its_outage(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A Jahresbeleg waits with no outage open (recorded by an earlier version): the
        first failed probe opens the outage, the next ones are counted in it."""
        with service.db.write_connection().transaction() as conn:
            now = service.clock.now().isoformat()
            record_waiting(conn, REGISTER, "yearly", "2026-12", "the unit failed", now)
        flaky.mode = "down"
        prober = _prober(service)
        prober.run_once()
        prober.run_once()
        [outage] = _outages(service)
        assert (outage.first_number, outage.probe_attempts) == (None, 2)
        assert [e["ok"] for e in journal_events(service.db, "outage.probe")] == [False, False]
        flaky.mode = "up"
        prober.run_once()
        assert not service.outages.is_open(REGISTER)
        assert service.waiting() == []
        assert _findings(service.db) == []

    def test_of_a_register_waiting_for_its_startbeleg_opens_nothing(
        self, bare_service: ReceiptService, bare_flaky: FlakyUnit
    ) -> None:
        """No register exists yet (an outage belongs to one): the Startbeleg's wait is its
        record; the probe neither opens an outage nor fails."""
        bare_flaky.mode = "down"
        assert bare_service.init_register_or_wait(RegisterSetup(REGISTER, ["dev"])) is None
        prober = _prober(bare_service)
        prober.run_once()
        assert _outages(bare_service) == []
        bare_flaky.mode = "up"
        prober.run_once()
        assert bare_service.waiting() == []
        assert _outages(bare_service) == []
        assert _findings(bare_service.db) == []


class TestAPendingOpening:
    def test_it_survives_a_transaction_that_fails_for_another_reason(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The outage a refusal met is pending when the transaction meant to open it fails
        (here: a bad Storno, InvalidSale): it is opened by the next one that commits."""
        # as a refusal leaves it when the transaction that should open it failed too
        pending = (REGISTER, "dev", "unit dev is down", clock.now())
        service._issuing._signing.refused_outage = pending
        storno = {"request_id": "s", "register": REGISTER, "kind": "storno", "voids": 99}
        with pytest.raises(InvalidSale):
            service.issue(storno)
        assert _outages(service) == []
        service.issue(sale(request_id="next"))
        [outage] = _outages(service)
        assert (outage.register_id, outage.cause, outage.ended_at) == (
            REGISTER,
            "unit dev is down",
            None,
        )

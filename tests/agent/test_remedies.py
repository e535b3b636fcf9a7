"""Unsigned receipts (chain service, unknown outcome), waiting special receipts, closings.

The chain service is the real fake on loopback (agent/fakes/chain_service.py); its modes
lose a request or a response after it was sent, which is what makes a receipt `unsigned`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3

import pytest

from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.closings import due_periods
from agent.errors import WaitsForUnit
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.outages import load_outages
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import db_rows, journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"


def _findings(db: TillDB, register: str = REGISTER) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, register, buffer)
    dep = json.loads(buffer.getvalue())
    report = verify_dep(dep, json.loads(export_container(db, register)))
    return [f"{f.receipt}: {f.rule}: {f.message}" for f in report.findings]


def _kinds(db: TillDB, register: str = REGISTER) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute(
            "SELECT number, kind, signature_state FROM receipts WHERE register_id = ?"
            " ORDER BY number",
            (register,),
        )
        return [(int(n), str(k), str(s)) for n, k, s in rows]
    finally:
        conn.close()


class TestChainServiceLosesARequest:
    def test_a_lost_request_is_remedied_by_nullbeleg_sammelbeleg_and_reissue(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The service never got it: Nullbeleg (signed), Sammelbeleg, the sale reissued."""
        service = chain_service
        assert service.issue(sale(request_id="a")).signature_state == "signed"
        chain.mode = "lose_request"
        lost = service.issue(sale(request_id="b"))
        assert lost.signature_state == "unsigned"
        assert service.unsigned(REGISTER) == [
            {"register": REGISTER, "number": 3, "receipt_id": "3"}
        ]
        # while the outage is open the next sale does not wait for the service
        assert service.issue(sale(request_id="c")).signature_state == "fallback"
        assert service.recover(REGISTER) is None  # still losing requests: nothing changes
        chain.mode = "up"
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.signature_state) for r in issued] == [
            ("null", "signed"),
            ("sammelbeleg", "signed"),
            ("storno", "signed"),  # takes back the unsigned receipt 3, which counted
            ("standard", "signed"),
        ]
        storno, replacement = issued[2:]
        assert "Storno zu Beleg 3" in storno.lines
        assert "Ersatz für unsignierten Beleg 3" in replacement.lines
        assert service.unsigned(REGISTER) == []
        assert journal_events(service.db, "receipt.superseded") == [
            {"number": 3, "jws": None, "replacement": replacement.number, "voided_by": 7}
        ]
        # the POS asking again for its sale gets the receipt that now stands for it
        assert service.issue(sale(request_id="b")).number == replacement.number
        outage = load_outages(service.db.write_connection()._conn)[0]
        assert outage.sammelbeleg_number == 6
        assert outage.first_number == 3
        # Sammelbeleg right after the first receipt signed again (the Nullbeleg): valid
        assert _findings(service.db) == []
        assert service.recover(REGISTER) == []  # exactly one Sammelbeleg

    def test_a_lost_response_is_adopted(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The service signed it but the answer was lost: the lookup finds it, no reissue."""
        service = chain_service
        chain.mode = "lose_response"
        lost = service.issue(sale(request_id="b"))
        assert lost.signature_state == "unsigned"
        chain.mode = "up"
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["sammelbeleg"]  # right after the last fallback
        adopted = journal_events(service.db, "receipt.adopted")
        assert len(adopted) == 1
        assert adopted[0]["number"] == 2
        assert str(adopted[0]["jws"]).rsplit(".", 1)[0] == lost.jws.rsplit(".", 1)[0]
        assert service.unsigned(REGISTER) == []
        assert _findings(service.db) == []

    def test_a_service_that_is_down_is_a_plain_fallback(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """503 is a known failure: nothing was signed, so the receipt is `fallback`."""
        chain.mode = "down"
        assert chain_service.issue(sale(request_id="b")).signature_state == "fallback"
        assert chain_service.unsigned(REGISTER) == []

    def test_the_prober_remedies_once_the_service_answers(
        self, chain_service: ReceiptService, chain: ChainServiceFake, clock: FrozenClock
    ) -> None:
        chain.mode = "lose_request"
        chain_service.issue(sale(request_id="b"))
        chain.mode = "up"
        prober = Prober(chain_service, Backoff(initial=1.0, jitter=0.0), deadline=1.0)
        prober.run_once()
        clock.advance(2)
        prober.run_once()
        assert [k for _, k, _ in _kinds(chain_service.db)] == [
            "start",
            "standard",
            "null",
            "sammelbeleg",
            "storno",
            "standard",
        ]
        assert chain_service.probe_targets() == []


class TestLocalUnitsNeverLeaveUnsigned:
    def test_a_failing_local_unit_gives_fallback_not_unsigned(
        self, service: ReceiptService, registry: UnitRegistry
    ) -> None:
        with service.db.write_connection().transaction() as conn:
            flaky = FlakyUnit(registry.get(conn, "dev"))
        registry.put(flaky)
        for mode in ("down", "garbage"):
            flaky.mode = mode
            assert service.issue(sale(request_id=mode)).signature_state == "fallback"
        assert service.unsigned() == []


@pytest.fixture(name="flaky")
def _flaky(bare_flaky: FlakyUnit) -> FlakyUnit:
    """Here the unit of the register each test initializes itself."""
    return bare_flaky


class TestWaitingSpecialReceipts:
    def test_a_startbeleg_waits_for_the_unit(
        self, bare_service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """The day starts with the unit down: the register waits, visibly, then starts."""
        flaky.mode = "down"
        assert bare_service.init_register_or_wait(RegisterSetup(REGISTER, ["dev"])) is None
        waiting = bare_service.waiting()
        assert [(w["register_id"], w["kind"]) for w in waiting] == [(REGISTER, "start")]
        alerts = journal_events(bare_service.db, "alert.raised")
        assert alerts[0]["alert"] == "special-receipt-waiting"
        with pytest.raises(WaitsForUnit, match="waits for its Startbeleg"):
            bare_service.issue(sale())
        assert bare_service.probe_targets() == [REGISTER]
        assert bare_service.recover(REGISTER) is None  # still down
        flaky.mode = "up"
        issued = bare_service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.number, r.signature_state) for r in issued] == [("start", 1, "signed")]
        assert bare_service.waiting() == []
        assert bare_service.issue(sale()).number == 2
        assert _findings(bare_service.db) == []

    def test_a_jahresbeleg_waits_and_a_monatsbeleg_takes_the_marker(
        self, bare_service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        flaky.mode = "down"
        monthly = bare_service.request_special(REGISTER, "monthly", period="2026-03")
        assert monthly is not None
        assert monthly.signature_state == "fallback"
        assert bare_service.request_special(REGISTER, "yearly", period="2026-12") is None
        assert bare_service.request_special(REGISTER, "yearly", period="2026-12") is None
        assert [w["kind"] for w in bare_service.waiting()] == ["yearly"]  # recorded once
        flaky.mode = "up"
        issued = bare_service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["sammelbeleg", "yearly"]
        assert all(r.signature_state == "signed" for r in issued)
        assert _findings(bare_service.db) == []


class TestClosings:
    def test_due_periods_in_the_register_time_zone(self) -> None:
        vienna = dt.timezone(dt.timedelta(hours=1))
        at = dt.datetime(2026, 3, 31, 23, 58, tzinfo=vienna)
        assert due_periods(None, "2026-03", at) == []
        assert due_periods(None, "2026-03", at + dt.timedelta(minutes=1)) == ["2026-03"]
        assert due_periods("2026-03", "2026-01", at + dt.timedelta(minutes=1)) == []
        later = dt.datetime(2027, 2, 3, 8, 0, tzinfo=vienna)
        assert due_periods("2026-10", "2026-01", later) == ["2026-11", "2026-12", "2027-01"]

    def test_month_end_uses_local_time_not_utc(
        self, bare_service: ReceiptService, clock: FrozenClock
    ) -> None:
        """23:59 in Vienna on 31 March is 21:59 UTC (summer time): the closing is due."""
        clock.set(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))
        bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        clock.set(dt.datetime(2026, 3, 31, 21, 58, tzinfo=dt.UTC))
        assert bare_service.run_closings() == []
        clock.set(dt.datetime(2026, 3, 31, 21, 59, 30, tzinfo=dt.UTC))
        [closing] = bare_service.run_closings()
        assert (closing.kind, closing.issued_at) == ("monthly", "2026-03-31T23:59:30")
        assert bare_service.run_closings() == []

    def test_catch_up_after_the_till_was_off_and_a_year_end_during_an_outage(
        self, bare_service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """Off from October to February, unit down at start: the first sale closes the
        months before it (Oct, Nov and Jan get the marker, December's Jahresbeleg waits)
        and goes on; the Jahresbeleg comes with the unit, after the Sammelbeleg."""
        clock.set(dt.datetime(2026, 10, 5, 9, 0, tzinfo=dt.UTC))
        bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        clock.set(dt.datetime(2027, 2, 3, 9, 0, tzinfo=dt.UTC))
        flaky.mode = "down"
        bare_service.issue(sale())  # the first sale of the day meets the failure
        states = db_rows(
            bare_service.db, "SELECT kind, signature_state FROM receipts ORDER BY number"
        )
        assert [tuple(r) for r in states] == [
            ("start", "signed"),
            ("monthly", "fallback"),
            ("monthly", "fallback"),
            ("monthly", "fallback"),  # January's: it does not wait behind December
            ("standard", "fallback"),
        ]
        assert [(w["kind"], w["period"]) for w in bare_service.waiting()] == [("yearly", "2026-12")]
        assert bare_service.run_closings() == []
        flaky.mode = "up"
        recovered = bare_service.recover(REGISTER)
        assert recovered is not None
        assert [r.kind for r in recovered] == ["sammelbeleg", "yearly"]
        assert bare_service.run_closings() == []
        assert _findings(bare_service.db) == []
        documents = [
            json.loads(r[0]).get("period")
            for r in sqlite3.connect(bare_service.db.path).execute(
                "SELECT document FROM receipts WHERE kind IN ('monthly', 'yearly') ORDER BY number"
            )
        ]
        assert documents == ["2026-10", "2026-11", "2027-01", "2026-12"]

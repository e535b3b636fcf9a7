"""A Startbeleg, Jahresbeleg or Sammelbeleg whose chain-service answer is lost.

The request reached the service (or may have): the service may hold the receipt signed
under its number. That number is never given to another receipt (rksv.md 1.1, field 3:
unique per Kassen-ID). A lost Sammel-/Jahresbeleg keeps its number as an ``unsigned``
receipt with the failure marker, and its obligation stays open (the outage, the waiting
Jahresbeleg) until a signed one is issued; a lost Startbeleg is never committed unsigned
(rksv.md 5): it waits, and recovery sends the very same signing input again.

The chain service is the real fake on loopback (agent/fakes/chain_service.py):
``lose_response`` stores and signs, then loses the answer (the service holds it);
``lose_request`` loses the request (the service does not hold it).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3

import pytest

from agent.api_backend import ServiceBackend
from agent.at_rksv.encoding import b64url_decode
from agent.at_rksv.payload import Payload
from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.errors import WaitsForUnit
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake, Mode
from agent.outages import load_outages
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.registry import UnitRegistry
from factories import db_rows, sale
from storage import TillDB

REGISTER = "KASSE-1"
LOSSES: tuple[Mode, ...] = ("lose_response", "lose_request")  # the service holds it / does not


@pytest.fixture(name="chain_hold")
def _chain_hold() -> float:
    return 1.5


@pytest.fixture(name="bare")
def _bare(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, chain_unit: str
) -> ReceiptService:
    """A service with the chain unit and no register yet."""
    return ReceiptService(db, registry, clock=clock, sign_timeout=1.0)


@pytest.fixture(name="service")
def _service(bare: ReceiptService) -> ReceiptService:
    bare.init_register(RegisterSetup(REGISTER, ["chain"]))
    return bare


def _receipts(db: TillDB) -> list[tuple[int, str, str]]:
    rows = db_rows(
        db,
        "SELECT number, kind, signature_state FROM receipts WHERE register_id = ? ORDER BY number",
        REGISTER,
    )
    return [(r["number"], r["kind"], r["signature_state"]) for r in rows]


def _resolutions(db: TillDB) -> list[tuple[int, str, int | None]]:
    rows = db_rows(
        db,
        "SELECT number, resolution, replacement_number FROM receipt_resolutions ORDER BY number",
    )
    return [(r["number"], r["resolution"], r["replacement_number"]) for r in rows]


def _findings(db: TillDB) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    return [f"{f.receipt}: {f.rule}: {f.message}" for f in report.findings]


def _assert_numbers_unique(db: TillDB, chain: ChainServiceFake) -> None:
    """Our numbers run 1..n; the service holds each number at most once, and what it
    holds under a number is exactly our receipt of that number (same signing input)."""
    ours = {
        r["receipt_id"]: r["jws"].rsplit(".", 1)[0]
        for r in db_rows(db, "SELECT receipt_id, jws FROM receipts WHERE register_id = ?", REGISTER)
    }
    assert sorted(map(int, ours)) == list(range(1, len(ours) + 1))
    held = chain.signing_inputs(REGISTER)
    numbers = [
        Payload.parse(b64url_decode(s.split(".")[1]).decode("utf-8")).receipt_id for s in held
    ]
    assert len(numbers) == len(set(numbers)), f"the service holds a number twice: {numbers}"
    for number, signing_input in zip(numbers, held, strict=True):
        assert ours.get(number) == signing_input, f"the service's receipt {number} is not ours"


def _open_outages(db: TillDB) -> list[int]:
    conn = sqlite3.connect(db.path)
    try:
        return [o.id for o in load_outages(conn) if o.ended_at is None]
    finally:
        conn.close()


@pytest.mark.parametrize("loss", LOSSES)
class TestALostSammelbeleg:
    def test_it_keeps_its_number_and_the_outage_stays_open_until_a_signed_one(
        self,
        service: ReceiptService,
        chain: ChainServiceFake,
        registry: UnitRegistry,
        clock: FrozenClock,
        loss: Mode,
    ) -> None:
        chain.mode = "down"
        assert service.issue(sale(request_id="a")).signature_state == "fallback"  # 2
        chain.mode = loss
        assert service.recover(REGISTER) is None  # the Sammelbeleg's answer is lost
        assert _receipts(service.db)[-1] == (3, "sammelbeleg", "unsigned")
        assert service.outages.is_open(REGISTER)  # an unsigned Sammelbeleg closes nothing
        assert service.unsigned(REGISTER) == [
            {"register": REGISTER, "number": 3, "receipt_id": "3"}
        ]
        # the next receipt does not get number 3 (the service may hold 3 signed)
        assert service.issue(sale(request_id="b")).number == 4
        [status] = ServiceBackend(service).status().registers  # GET /v1/status
        assert (status.waiting_special, status.unsigned_count) == (["sammelbeleg"], 1)
        assert status.open_outage is not None
        # a restart (a new service over the same database) still owes the Sammelbeleg
        service = ReceiptService(service.db, registry, clock=clock, sign_timeout=1.0)
        assert REGISTER in service.probe_targets()
        chain.mode = "up"
        clock.advance(60)
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.number, r.signature_state) for r in issued] == [
            ("sammelbeleg", 5, "signed")
        ]
        held = loss == "lose_response"
        assert _resolutions(service.db) == [(3, "adopted", None) if held else (3, "superseded", 5)]
        assert not service.outages.is_open(REGISTER)
        outage = load_outages(service.db.write_connection()._conn)[0]
        assert outage.sammelbeleg_number == 5
        assert service.unsigned(REGISTER) == []
        assert service.probe_targets() == []
        assert service.recover(REGISTER) == []  # exactly one signed Sammelbeleg
        assert service.issue(sale(request_id="c")).signature_state == "signed"
        _assert_numbers_unique(service.db, chain)
        assert _findings(service.db) == []

    def test_one_asked_for_through_the_api_waits(
        self, service: ReceiptService, chain: ChainServiceFake, loss: Mode
    ) -> None:
        """``issue_special`` (POST zero receipt): the lost one keeps its number, 503."""
        chain.mode = "down"
        service.issue(sale(request_id="a"))
        chain.mode = loss
        with pytest.raises(WaitsForUnit, match="no answer came"):
            service.issue_special(REGISTER, "sammelbeleg")
        assert _receipts(service.db)[-1] == (3, "sammelbeleg", "unsigned")
        assert service.outages.is_open(REGISTER)
        chain.mode = "up"
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.number) for r in issued] == [("sammelbeleg", 4)]
        assert _open_outages(service.db) == []
        _assert_numbers_unique(service.db, chain)
        assert _findings(service.db) == []


@pytest.mark.parametrize("loss", LOSSES)
def test_a_lost_jahresbeleg_waits_and_is_issued_anew(
    bare: ReceiptService, chain: ChainServiceFake, clock: FrozenClock, loss: Mode
) -> None:
    clock.set(dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC))  # December: no month before it
    service = bare
    service.init_register(RegisterSetup(REGISTER, ["chain"]))
    clock.set(dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC))  # 00:00 in Vienna: due
    chain.mode = loss
    assert service.request_special(REGISTER, "yearly", period="2026-12") is None
    assert _receipts(service.db)[-1] == (2, "yearly", "unsigned")
    assert [(w["kind"], w["period"]) for w in service.waiting(REGISTER)] == [("yearly", "2026-12")]
    assert service.run_closings() == []  # it waits; it is not issued a second time here
    [status] = ServiceBackend(service).status().registers  # GET /v1/status
    assert status.waiting_special == ["yearly", "sammelbeleg"]  # the outage it opened, too
    assert status.unsigned_count == 1
    assert service.issue(sale(request_id="a")).number == 3  # fallback; never number 2
    chain.mode = "up"
    clock.advance(60)
    issued = service.recover(REGISTER)
    assert issued is not None
    assert [(r.kind, r.number, r.signature_state) for r in issued] == [
        ("sammelbeleg", 4, "signed"),
        ("yearly", 5, "signed"),
    ]
    held = loss == "lose_response"
    assert _resolutions(service.db) == [(2, "adopted", None) if held else (2, "superseded", 5)]
    assert service.waiting(REGISTER) == []
    assert service.unsigned(REGISTER) == []
    [reg] = db_rows(service.db, "SELECT last_closing FROM registers WHERE id = ?", REGISTER)
    assert reg["last_closing"] == "2026-12"
    assert service.run_closings() == []  # December is closed, once
    assert service.recover(REGISTER) == []
    _assert_numbers_unique(service.db, chain)
    assert _findings(service.db) == []


@pytest.mark.parametrize("loss", LOSSES)
class TestALostStartbeleg:
    def test_it_waits_and_the_same_receipt_is_sent_again(
        self, bare: ReceiptService, chain: ChainServiceFake, clock: FrozenClock, loss: Mode
    ) -> None:
        setup = RegisterSetup(REGISTER, ["chain"])
        chain.mode = loss
        assert bare.init_register_or_wait(setup) is None
        assert [w["kind"] for w in bare.waiting(REGISTER)] == ["start"]
        assert _receipts(bare.db) == []  # never committed with the failure marker
        [status] = ServiceBackend(bare).status().registers  # GET /v1/status
        assert (status.register_id, status.state) == (REGISTER, "waiting")
        first = chain.signing_inputs(REGISTER)
        assert len(first) == (1 if loss == "lose_response" else 0)
        clock.advance(3600)
        # a second init (another key, another date) would sign a second number 1
        with pytest.raises(WaitsForUnit, match="sent again unchanged"):
            bare.init_register(RegisterSetup(REGISTER, ["chain"]))
        chain.mode = "up"
        issued = bare.recover(REGISTER)
        assert issued is not None
        [start] = issued
        assert (start.kind, start.number, start.signature_state) == ("start", 1, "signed")
        assert start.issued_at == "2026-03-02T11:00:00"  # (Vienna) the date of the one sent first
        [held] = chain.signing_inputs(REGISTER)
        assert first in ([], [held])
        assert bare.waiting(REGISTER) == []
        assert bare.issue(sale(request_id="a")).number == 2
        _assert_numbers_unique(bare.db, chain)
        assert _findings(bare.db) == []

    def test_init_without_waiting_records_it_too(
        self, bare: ReceiptService, chain: ChainServiceFake, loss: Mode
    ) -> None:
        """``till-agent init`` (no waiting wanted) fails, but the sent Startbeleg waits."""
        chain.mode = loss
        with pytest.raises(WaitsForUnit, match="sent again unchanged"):
            bare.init_register(RegisterSetup(REGISTER, ["chain"]))
        assert [w["kind"] for w in bare.waiting(REGISTER)] == ["start"]
        chain.mode = "up"
        issued = bare.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.number) for r in issued] == [("start", 1)]
        _assert_numbers_unique(bare.db, chain)
        assert _findings(bare.db) == []


def test_a_startbeleg_lost_during_recovery_keeps_its_date(
    bare: ReceiptService, chain: ChainServiceFake, clock: FrozenClock
) -> None:
    """Down first (nothing sent), then the retry's answer is lost: the next retry sends
    that retry's receipt again, not a third one."""
    chain.mode = "down"
    assert bare.init_register_or_wait(RegisterSetup(REGISTER, ["chain"])) is None
    clock.advance(60)
    chain.mode = "lose_response"
    assert bare.recover(REGISTER) is None
    assert len(chain.signing_inputs(REGISTER)) == 1
    clock.advance(60)
    chain.mode = "up"
    issued = bare.recover(REGISTER)
    assert issued is not None
    assert [(r.kind, r.issued_at) for r in issued] == [("start", "2026-03-02T11:01:00")]
    assert len(chain.signing_inputs(REGISTER)) == 1
    _assert_numbers_unique(bare.db, chain)
    assert _findings(bare.db) == []


def test_a_startbeleg_recovered_next_year_closes_the_year_it_is_dated_in(
    bare: ReceiptService, chain: ChainServiceFake, clock: FrozenClock
) -> None:
    """Sent on 20 December, its answer lost, the service back on 3 January: the
    Startbeleg keeps its December date, so December is the register's first month and
    its Jahresbeleg is due (rksv.md 6), not skipped because the register row was written
    in January."""
    clock.set(dt.datetime(2026, 12, 20, 10, 0, tzinfo=dt.UTC))
    chain.mode = "lose_response"
    assert bare.init_register_or_wait(RegisterSetup(REGISTER, ["chain"])) is None
    chain.mode = "up"
    clock.set(dt.datetime(2027, 1, 3, 9, 0, tzinfo=dt.UTC))
    issued = bare.recover(REGISTER)
    assert issued is not None
    assert [(r.kind, r.issued_at) for r in issued] == [("start", "2026-12-20T11:00:00")]
    [yearly] = bare.run_closings()
    assert (yearly.kind, yearly.number) == ("yearly", 2)
    _assert_numbers_unique(bare.db, chain)


def test_a_remedy_whose_nullbeleg_is_lost_keeps_every_number(
    service: ReceiptService, chain: ChainServiceFake
) -> None:
    """The remedy's signed-only receipts (Nullbeleg, Storno, reissue) are not rolled back
    either: a lost one is committed unsigned and the rest of the remedy waits."""
    chain.mode = "lose_request"
    assert service.issue(sale(request_id="a")).signature_state == "unsigned"  # 2
    chain.mode = "lose_put_response"  # the lookup of 2 is answered (not held)
    assert service.recover(REGISTER) is None  # the Nullbeleg's answer is lost
    assert _receipts(service.db)[-1] == (3, "null", "unsigned")
    assert service.issue(sale(request_id="b")).number == 4
    chain.mode = "up"
    issued = service.recover(REGISTER)
    assert issued is not None
    assert [(r.kind, r.signature_state) for r in issued] == [
        ("null", "signed"),
        ("sammelbeleg", "signed"),
        ("storno", "signed"),
        ("standard", "signed"),
    ]
    assert _resolutions(service.db) == [(2, "superseded", 8), (3, "adopted", None)]
    assert service.unsigned(REGISTER) == []
    assert _open_outages(service.db) == []
    _assert_numbers_unique(service.db, chain)
    assert _findings(service.db) == []

"""A till process that dies while a chain service signs never frees the receipt number.

The death is played by an exception raised where the receipt would be stored (the
service has answered, COMMIT has not happened); a new ReceiptService on the same
database is the restart. tests/crash/test_chain_kill.py kills real processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.errors import InvalidSale, RegisterClosed, WaitsForUnit
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.interrupted import _INTERRUPTED
from agent.issuing import Issuing
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import add_unit, db_rows, journal_events, run_threads, sale
from storage import TillDB

REGISTER = "KASSE-1"


@pytest.fixture(name="december")
def _december(clock: FrozenClock) -> None:
    """The register is made on 31 December (11:00 in Vienna), so its Jahresbeleg may be
    issued."""
    clock.set(dt.datetime(2026, 12, 31, 10, 0, tzinfo=dt.UTC))


class _Died(BaseException):
    """The process ends here (nothing after it runs, the transaction rolls back)."""


def _die_while_storing(monkeypatch: pytest.MonkeyPatch) -> None:
    def died(*_: object) -> None:
        raise _Died

    monkeypatch.setattr(Issuing, "store", died)


def _restart(db: TillDB, registry: UnitRegistry, clock: FrozenClock) -> ReceiptService:
    return ReceiptService(db, registry, clock=clock, sign_timeout=1.5)


def _rows(db: TillDB, register: str = REGISTER) -> list[tuple[Any, ...]]:
    sql = "SELECT number, kind, signature_state FROM receipts WHERE register_id = ? ORDER BY number"
    return [tuple(r) for r in db_rows(db, sql, register)]


def _check_dep(db: TillDB, chain: ChainServiceFake, register: str = REGISTER) -> None:
    """Every receipt the service signed is in our DEP, and the DEP verifies."""
    buffer = io.StringIO()
    export_dep(db, register, buffer)
    dep = json.loads(buffer.getvalue())
    report = verify_dep(dep, json.loads(export_container(db, register)))
    assert report.ok, report.findings[:5]
    ours = {r["jws"].rsplit(".", 1)[0] for r in db_rows(db, "SELECT jws FROM receipts")}
    assert set(chain.signing_inputs(register)) <= ours


class TestAStandardSale:
    def test_the_sale_the_service_signed_is_stored_unsigned_and_adopted(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """At restart the sale keeps its number and request_id (the POS's retry gets it),
        the outage opens, and recovery adopts the service's signature: no second 2."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.issue(sale(request_id="r-1"))
        assert _rows(db) == [(1, "start", "signed")]
        service = _restart(db, registry, clock)
        assert _rows(db) == [(1, "start", "signed"), (2, "standard", "unsigned")]
        again = service.issue_once(sale(request_id="r-1"))
        assert (again.created, again.result.number) == (False, 2)
        assert service.outages.is_open(REGISTER)
        [event] = journal_events(db, "signing.interrupted")
        assert event["number"] == 2
        assert service.recover(REGISTER) is not None
        assert service.unsigned() == []
        assert service.issue(sale(request_id="r-2")).number > 2
        _check_dep(db, chain)

    def test_an_intent_of_an_earlier_version_with_its_event_is_stored_the_same(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Intents once kept the receipt's journal event too (it is derivable): a till's
        database may hold such a row, and a restart stores its receipt and event alike."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.issue(sale(request_id="r-1"))
        [(row_id, text)] = db_rows(db, "SELECT id, intent FROM pending_signings WHERE number = 2")
        intent = json.loads(text)
        receipt = intent["receipt"]
        assert "event" not in receipt  # derived from the receipt now
        document = json.loads(receipt["document"])
        earlier = {  # the event as earlier versions kept it in the intent
            "number": 2,
            "receipt_id": receipt["receipt_id"],
            "kind": "standard",
            "jws": receipt["jws"],
            "signature_state": "unsigned",
            "unit_id": receipt["unit_id"],
            "voids_number": None,
            "request_id": "r-1",
            "turnover_cents": receipt["turnover"],
            "issued_at": receipt["issued_at"],
            "amounts": receipt["amounts"],
            "lines": document["lines"],
            "payments": document["payments"],
            "document_sha256": hashlib.sha256(receipt["document"].encode()).hexdigest(),
        }
        receipt["event"] = earlier
        with db.write_connection().transaction() as conn:  # the last intent of number 2
            conn.execute(
                "INSERT INTO pending_signings (register_id, number, kind, intent, at)"
                " SELECT register_id, number, kind, ?, at FROM pending_signings WHERE id = ?",
                (json.dumps(intent), row_id),
            )
        _restart(db, registry, clock)
        assert _rows(db) == [(1, "start", "signed"), (2, "standard", "unsigned")]
        assert journal_events(db, "receipt.issued")[-1] == earlier

    def test_a_committed_sale_leaves_no_intent_behind(
        self, chain_service: ReceiptService, db: TillDB, registry: UnitRegistry, clock: FrozenClock
    ) -> None:
        """An intent is done once its receipt exists: a restart stores nothing more."""
        chain_service.issue(sale(request_id="r-1"))
        assert len(db_rows(db, "SELECT * FROM pending_signings")) == 2  # Startbeleg, sale
        _restart(db, registry, clock)
        assert _rows(db) == [(1, "start", "signed"), (2, "standard", "signed")]
        assert journal_events(db, "signing.interrupted") == []


class TestManyIntents:
    """A chain-service till records one intent per receipt: the start must not read them all."""

    HISTORY = 200_000

    @pytest.fixture(name="history")
    def _history(self, chain_service: ReceiptService, db: TillDB) -> None:
        """The intents of receipts that exist (the Startbeleg's number), inserted in one
        statement: the history of a till that has sold for years."""
        with db.write_connection().transaction() as conn:
            conn.execute(
                "INSERT INTO pending_signings (register_id, number, kind, intent, at)"
                " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " SELECT ?, 1, 'standard', '{}', '2026-03-02T10:00:00+00:00' FROM n",
                (self.HISTORY, REGISTER),
            )

    @pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
    @pytest.mark.usefixtures("history")
    def test_the_start_query_seeks_indexes_and_scans_no_intents(
        self, db: TillDB, analyzed: bool
    ) -> None:
        """EXPLAIN QUERY PLAN: pending_signings is only searched through its two indexes
        (past each register's last number; the Startbelege), never scanned, also once
        ANALYZE has statistics of the many done intents."""
        with db.write_connection().transaction() as conn:
            if analyzed:
                conn.execute("ANALYZE")
            plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {_INTERRUPTED}")]
        on_intents = [step for step in plan if re.match(r"(SCAN|SEARCH) [pq]\b", step)]
        assert on_intents, plan
        for step in on_intents:
            assert re.match(r"SEARCH [pq] USING (COVERING )?INDEX ix_pending_signings_", step), plan
        assert any("ix_pending_signings_number (register_id=? AND number>?)" in s for s in plan)
        assert any("ix_pending_signings_start (kind=?)" in s for s in plan)

    @pytest.mark.usefixtures("history")
    def test_an_interrupted_sale_is_found_among_them(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The sale whose process died is stored unsigned at restart; the done intents
        store nothing."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.issue(sale(request_id="r-1"))
        _restart(db, registry, clock)
        assert _rows(db) == [(1, "start", "signed"), (2, "standard", "unsigned")]
        assert [e["number"] for e in journal_events(db, "signing.interrupted")] == [2]


# init_register's arguments: the ordinary Startbeleg, and a scenario replay's (its id,
# date and unit), which goes through the same intent and savepoint (Issuing.start_in)
_REPLAY_STAMP = "2026-03-02T11:00:00"
_INITS: list[dict[str, Any]] = [
    {},
    {"receipt_id": "S-1", "issued_at": _REPLAY_STAMP, "unit_position": 0},
]


@pytest.mark.parametrize("init", _INITS, ids=["ordinary", "replayed"])
class TestAStartbeleg:
    def test_the_register_waits_with_its_stamp_and_gets_the_same_startbeleg(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        chain_unit: str,
        monkeypatch: pytest.MonkeyPatch,
        init: dict[str, Any],
    ) -> None:
        """The Startbeleg the service signed is sent again unchanged: it holds one."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.init_register(RegisterSetup("KASSE-2", [chain_unit]), **init)
        service = _restart(db, registry, clock)
        assert [w["kind"] for w in service.waiting("KASSE-2")] == ["start"]
        with pytest.raises(WaitsForUnit):
            service.init_register(RegisterSetup("KASSE-2", [chain_unit]))
        clock.advance(90)  # a new Startbeleg would carry another date
        [start] = service.recover("KASSE-2") or []
        assert (start.number, start.signature_state) == (1, "signed")
        assert start.receipt_id == init.get("receipt_id", "1")
        assert len(chain.signing_inputs("KASSE-2")) == 1
        _check_dep(db, chain, "KASSE-2")

    def test_a_refusal_creates_nothing_and_voids_the_intent(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        chain_unit: str,
        init: dict[str, Any],
    ) -> None:
        """A service that is down signed nothing: the register is not created (not even by
        the commit of the void intent), and a restart makes nothing wait for it, so the
        init (or the replay) can be run again."""
        chain.mode = "down"
        with pytest.raises(WaitsForUnit, match="must be validly signed"):
            chain_service.init_register(RegisterSetup("KASSE-2", [chain_unit]), **init)
        assert db_rows(db, "SELECT id FROM registers WHERE id = 'KASSE-2'") == []
        sql = "SELECT kind FROM pending_signings WHERE register_id = 'KASSE-2' ORDER BY id"
        assert [r[0] for r in db_rows(db, sql)] == ["start", "void"]
        service = _restart(db, registry, clock)
        assert service.waiting("KASSE-2") == []
        chain.mode = "up"
        start = service.init_register(RegisterSetup("KASSE-2", [chain_unit]), **init)
        assert (start.number, start.signature_state) == (1, "signed")
        _check_dep(db, chain, "KASSE-2")

    def test_a_startbeleg_whose_answer_was_lost_is_never_stored_unsigned(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        chain_unit: str,
        init: dict[str, Any],
    ) -> None:
        """The Startbeleg is never committed with the failure marker (rksv.md 5), not even
        from an intent found at the next start: it waits (a new init or replay is
        refused), and recovery sends it again unchanged."""
        chain.mode = "lose_response"
        setup = RegisterSetup("KASSE-2", [chain_unit])
        with pytest.raises(WaitsForUnit, match="no answer came"):
            chain_service.init_register(setup, **init)
        chain.mode = "up"
        service = _restart(db, registry, clock)
        service.issue(sale(request_id="s1"))
        sql = "SELECT number FROM receipts WHERE register_id = 'KASSE-2'"
        assert db_rows(db, sql) == []
        with pytest.raises(WaitsForUnit, match="no answer came"):  # never anew
            service.init_register(setup, receipt_id="S-2", issued_at=_REPLAY_STAMP)
        clock.advance(90)
        [start] = service.recover("KASSE-2") or []
        assert (start.signature_state, start.receipt_id) == ("signed", init.get("receipt_id", "1"))
        assert len(chain.signing_inputs("KASSE-2")) == 1
        _check_dep(db, chain, "KASSE-2")


def test_a_waiting_replayed_startbeleg_is_probed_on_the_unit_it_named(
    chain_service: ReceiptService,
    chain: ChainServiceFake,
    db: TillDB,
    registry: UnitRegistry,
    chain_unit: str,
    tmp_path: Path,
) -> None:
    """While a replayed Startbeleg waits, its unit (not the register's first) is probed."""
    token_file = tmp_path / "chain-token"  # the chain_unit fixture's
    add_unit(
        db,
        registry,
        UnitConfig(id="chain-2", kind="chain", zda="AT1", url=chain.url, token_file=token_file),
    )
    chain.mode = "lose_response"
    with pytest.raises(WaitsForUnit, match="no answer came"):
        chain_service.init_register(
            RegisterSetup("KASSE-2", ["chain-2", chain_unit]), receipt_id="S-1", unit_position=1
        )
    assert chain_service.unit_of("KASSE-2").identity.unit_id == chain_unit


def test_a_replay_names_a_unit_of_the_register(
    chain_service: ReceiptService, db: TillDB, chain_unit: str
) -> None:
    """A replay's ``unit_position`` past the register's units is refused naming the field,
    before anything is sent or committed."""
    with pytest.raises(InvalidSale, match="no unit at position 1") as refused:
        chain_service.init_register(RegisterSetup("KASSE-2", [chain_unit]), unit_position=1)
    assert refused.value.field == "unit_position"
    assert db_rows(db, "SELECT id FROM pending_signings WHERE register_id = 'KASSE-2'") == []


class TestASammelbeleg:
    def test_the_sammelbeleg_is_stored_unsigned_and_the_outage_still_closes(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An interrupted Sammelbeleg keeps its number; recovery adopts it and closes the
        outage with a signed one (as after a lost answer)."""
        chain.mode = "down"
        assert chain_service.issue(sale(request_id="f")).signature_state == "fallback"
        chain.mode = "up"
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.recover(REGISTER)
        service = _restart(db, registry, clock)
        assert _rows(db)[-1] == (3, "sammelbeleg", "unsigned")
        assert service.recover(REGISTER) is not None
        assert not service.outages.is_open(REGISTER)
        assert service.unsigned() == []
        _check_dep(db, chain)


class TestALocalUnit:
    def test_a_software_unit_records_no_intent(self, service: ReceiptService, db: TillDB) -> None:
        """Local units sign in-process: no intent, no extra commit per receipt."""
        commits = service.db.write_connection().commits
        service.issue(sale(request_id="s-1"))
        assert service.db.write_connection().commits == commits + 1
        assert db_rows(db, "SELECT * FROM pending_signings") == []


class TestAJahresbeleg:
    def test_the_jahresbeleg_is_stored_unsigned_and_waits_for_a_signed_one(
        self,
        december: None,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """As after a lost answer: the month stays open and the Jahresbeleg waits; recovery
        adopts the unsigned one and issues the signed Jahresbeleg."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.issue_special(REGISTER, "yearly")
        service = _restart(db, registry, clock)
        assert _rows(db)[-1] == (2, "yearly", "unsigned")
        assert [w["kind"] for w in service.waiting(REGISTER)] == ["yearly"]
        issued = service.recover(REGISTER) or []
        assert [(r.kind, r.signature_state) for r in issued][-1] == ("yearly", "signed")
        assert service.waiting(REGISTER) == []
        assert service.unsigned() == []
        _check_dep(db, chain)


class TestASchlussbeleg:
    def test_the_register_waits_for_the_same_schlussbeleg(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The Schlussbeleg keeps its number: the register sells nothing more, and recovery
        sends the same Schlussbeleg again, so the service holds one under that number."""
        with monkeypatch.context() as patch:
            _die_while_storing(patch)
            with pytest.raises(_Died):
                chain_service.issue_special(REGISTER, "closing")
        service = _restart(db, registry, clock)
        assert [w["kind"] for w in service.waiting(REGISTER)] == ["closing"]
        with pytest.raises(WaitsForUnit, match="Schlussbeleg"):
            service.issue(sale(request_id="late"))
        _restart(db, registry, clock)  # a second start does not record it twice
        assert len(journal_events(db, "signing.interrupted")) == 1
        clock.advance(90)
        [closing] = service.recover(REGISTER) or []
        assert (closing.number, closing.kind, closing.signature_state) == (2, "closing", "signed")
        assert len(chain.signing_inputs(REGISTER)) == 2  # Startbeleg and one Schlussbeleg
        with pytest.raises(RegisterClosed):
            service.issue(sale(request_id="later"))
        _check_dep(db, chain)

    def test_a_lost_answer_makes_the_register_wait_at_once(
        self, chain_service: ReceiptService, chain: ChainServiceFake, db: TillDB
    ) -> None:
        """A Schlussbeleg whose answer is lost is not dropped (the service may hold it):
        the register waits for it, and recovery stores the one the service signed."""
        chain.mode = "lose_response"
        with pytest.raises(WaitsForUnit, match="Schlussbeleg"):
            chain_service.issue_special(REGISTER, "closing")
        assert [w["kind"] for w in chain_service.waiting(REGISTER)] == ["closing"]
        chain.mode = "up"
        [closing] = chain_service.recover(REGISTER) or []
        assert (closing.number, closing.signature_state) == (2, "signed")
        assert len(chain.signing_inputs(REGISTER)) == 2
        _check_dep(db, chain)

    def test_a_refusal_frees_the_number(
        self, chain_service: ReceiptService, chain: ChainServiceFake, db: TillDB
    ) -> None:
        """A service that is down signed nothing: the intent is void, the register sells."""
        chain.mode = "down"
        with pytest.raises(WaitsForUnit, match="nothing was issued"):
            chain_service.issue_special(REGISTER, "closing")
        assert chain_service.waiting(REGISTER) == []
        chain.mode = "up"
        assert chain_service.issue(sale(request_id="next")).number == 2


class TestAGroupCommit:
    def test_concurrent_sales_on_a_chain_unit_each_commit_their_intent(
        self, chain_service: ReceiptService, chain: ChainServiceFake, db: TillDB
    ) -> None:
        """Sales that share a group commit each commit their intent inside it (the group's
        savepoints are opened again after each): all are signed, numbered without a gap."""
        numbers: list[int] = []

        def sell(i: int) -> None:
            numbers.append(chain_service.issue(sale(request_id=f"g-{i}")).number)

        run_threads(8, sell)
        assert sorted(numbers) == list(range(2, 10))
        assert {r[2] for r in _rows(db)} == {"signed"}
        _check_dep(db, chain)

"""Registers sharing a signature unit: its failure and its recovery act for all of them.

Registers A, B and C sign with unit ``shared``, K with unit ``own``. Once ``shared`` fails
for one register, the others skip it without waiting for its deadline (each register's own
outage opens, with its own Sammelbeleg later); once it signs again for one register's
recovery, the others are recovered in the same probe round instead of issuing fallback
receipts until their own probe comes round.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.issuing import Issuing
from agent.outages import load_outages
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import add_unit, journal_events, sale
from storage import TillDB

TIMEOUT = 0.5  # the signing deadline
SHARED = ("A", "B", "C")


def _unit(db: TillDB, registry: UnitRegistry, tmp_path: Path, unit_id: str) -> FlakyUnit:
    key_file, cert_file = create_software_unit(tmp_path / "units", name=unit_id)
    config = UnitConfig(
        id=unit_id, kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
    )
    add_unit(db, registry, config)
    with db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, unit_id), delay=30.0)
    registry.put(flaky)
    return flaky


@pytest.fixture(name="units")
def _units(db: TillDB, registry: UnitRegistry, tmp_path: Path) -> dict[str, FlakyUnit]:
    return {u: _unit(db, registry, tmp_path, u) for u in ("shared", "own")}


@pytest.fixture(name="till")
def _till(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, units: dict[str, FlakyUnit]
) -> ReceiptService:
    service = ReceiptService(db, registry, clock=clock, sign_timeout=TIMEOUT)
    for register_id in SHARED:
        service.init_register(RegisterSetup(register_id, ["shared"]))
    service.init_register(RegisterSetup("K", ["own"]))
    return service


def _sell(service: ReceiptService, register_id: str, request_id: str) -> ReceiptResult:
    return service.issue(sale(register=register_id, request_id=request_id))


def _timed(service: ReceiptService, register_id: str, request_id: str) -> tuple[str, float]:
    started = time.monotonic()
    state = _sell(service, register_id, request_id).signature_state
    return state, time.monotonic() - started


class TestOneDeadlinePerFailure:
    def test_the_other_registers_skip_a_unit_that_failed_for_one(
        self, till: ReceiptService, units: dict[str, FlakyUnit]
    ) -> None:
        """A's sale waits for the deadline; B's and C's fall back at once without asking the
        unit, each opening its own outage; K's unit is not concerned."""
        shared = units["shared"]
        shared.mode = "slow"
        calls = shared.calls
        assert _timed(till, "A", "a-1") == ("fallback", pytest.approx(TIMEOUT, abs=0.4))
        assert shared.calls == calls + 1
        for register_id in ("B", "C"):
            state, took = _timed(till, register_id, f"{register_id}-1")
            assert (state, took < 0.2) == ("fallback", True)
        assert shared.calls == calls + 1  # not asked again
        assert _sell(till, "K", "k-1").signature_state == "signed"
        assert till.outages.open_registers() == ["A", "B", "C"]
        with till.db.read_connection() as conn:
            outages = {o.register_id: o for o in load_outages(conn)}
        assert {o.unit_id for o in outages.values()} == {"shared"}
        assert "not asked" in outages["B"].cause
        assert "no answer by the deadline" in outages["B"].cause
        assert outages["B"].first_number == 2  # each register's own record, its own receipt

    def test_sales_arriving_together_wait_one_deadline(
        self, till: ReceiptService, units: dict[str, FlakyUnit]
    ) -> None:
        """A, B and C sell at once on the hung unit, K on its working one: every answer
        comes within one deadline (not one deadline per register on the shared unit)."""
        units["shared"].mode = "slow"
        results: dict[str, tuple[str, float]] = {}

        def sell(register_id: str) -> None:
            results[register_id] = _timed(till, register_id, f"{register_id}-1")

        threads = [threading.Thread(target=sell, args=(r,)) for r in (*SHARED, "K")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert {r: s for r, (s, _) in results.items()} == {
            "A": "fallback",
            "B": "fallback",
            "C": "fallback",
            "K": "signed",
        }
        slowest = max(took for _, took in results.values())
        assert slowest < 2 * TIMEOUT, results  # (three deadlines before)

    def test_a_failed_probe_marks_the_unit_for_the_others(
        self, till: ReceiptService, units: dict[str, FlakyUnit]
    ) -> None:
        """A failed probe of A's outage (its unit still down) is a failure of the unit: B,
        which had not met it yet, falls back without asking it."""
        shared = units["shared"]
        shared.mode = "down"
        assert _sell(till, "A", "a-1").signature_state == "fallback"
        shared.mode = "up"
        assert till.recover("A") is not None  # signs again: B would ask it
        shared.mode = "down"
        assert _sell(till, "A", "a-2").signature_state == "fallback"
        till.record_probe("A", False, "unit shared is down (simulated)")
        shared.mode = "slow"
        calls = shared.calls
        state, took = _timed(till, "B", "b-1")
        assert (state, took < 0.2, shared.calls) == ("fallback", True, calls)

    def test_a_rolled_back_outage_leaves_the_unit_unmarked(
        self, till: ReceiptService, clock: FrozenClock
    ) -> None:
        """The mark follows the record: a transaction that opened an outage and rolled
        back leaves the unit as it was (records, not moods)."""

        def opened_then_failed() -> None:
            with till.db.write_connection().transaction() as conn:
                till.outages.open(
                    conn, register_id="A", unit_id="shared", cause="x", number=None, at=clock.now()
                )
                assert till.outages.unit_down("shared") == "x"
                raise RuntimeError

        with pytest.raises(RuntimeError):
            opened_then_failed()
        till.outages.settle(committed=False)
        assert till.outages.unit_down("shared") is None
        assert _sell(till, "B", "b-1").signature_state == "signed"

    def test_a_register_without_outage_signs_once_the_unit_signed_again(
        self, till: ReceiptService, units: dict[str, FlakyUnit]
    ) -> None:
        """C never met the failure: it skips the unit while it is known to fail, and asks it
        again as soon as it signed A's Sammelbeleg."""
        shared = units["shared"]
        shared.mode = "down"
        _sell(till, "A", "a-0")
        shared.mode = "up"
        assert till.recover("A") is not None
        assert _sell(till, "C", "c-1").signature_state == "signed"
        assert till.outages.open_registers() == []


class TestRecoveryOfAllRegisters:
    @pytest.fixture(name="prober")
    def _prober(self, till: ReceiptService) -> Prober:
        return Prober(till, Backoff(initial=5.0, cap=60.0, jitter=0.0))

    def test_the_unit_back_for_one_register_recovers_the_others_at_once(
        self,
        till: ReceiptService,
        units: dict[str, FlakyUnit],
        clock: FrozenClock,
        prober: Prober,
    ) -> None:
        """A's outage opens at t=0, B's at t=30, the unit is back at t=300: the round that
        issues A's Sammelbeleg issues B's too, and B's next sale is signed."""
        shared = units["shared"]
        shared.mode = "down"
        for second in range(400):
            if second == 0:
                assert _sell(till, "A", "a-0").signature_state == "fallback"
            if second == 30:
                assert _sell(till, "B", "b-0").signature_state == "fallback"
            if second == 300:
                shared.mode = "up"
            before = set(till.outages.open_registers())
            prober.run_once()
            after = set(till.outages.open_registers())
            if before != after:
                assert (before, after) == ({"A", "B"}, set())  # together
                break
            clock.advance(1)
        else:
            pytest.fail("the outages never closed")
        assert _sell(till, "B", "b-1").signature_state == "signed"
        assert _sell(till, "C", "c-1").signature_state == "signed"
        with till.db.read_connection() as conn:
            closed = {o.register_id: o.sammelbeleg_number for o in load_outages(conn)}
        assert closed == {"A": 3, "B": 3}  # each its own Sammelbeleg, after its receipt 2

    def test_a_hung_unit_costs_one_probe_deadline_per_round(
        self,
        till: ReceiptService,
        units: dict[str, FlakyUnit],
        clock: FrozenClock,
    ) -> None:
        """A, B and C wait for the hung unit: a round that probes all three asks it once
        and records the failed probe in each outage."""
        prober = Prober(till, Backoff(initial=5.0, cap=60.0, jitter=0.0), deadline=TIMEOUT)
        shared = units["shared"]
        shared.mode = "down"
        for register_id in SHARED:
            _sell(till, register_id, f"{register_id}-0")
        shared.mode = "slow"
        prober.run_once()  # each gets its first probe time
        clock.advance(6)
        calls, started = shared.calls, time.monotonic()
        prober.run_once()
        assert time.monotonic() - started < 2 * TIMEOUT  # (three deadlines before)
        assert shared.calls == calls + 1
        probes = journal_events(till.db, "outage.probe")
        assert [(p["outage"], p["ok"]) for p in probes] == [(1, False), (2, False), (3, False)]
        assert "no answer by the deadline" in str(probes[2]["detail"])

    def test_a_sammelbeleg_issued_outside_the_prober_recovers_the_others_next_round(
        self,
        till: ReceiptService,
        units: dict[str, FlakyUnit],
        clock: FrozenClock,
        prober: Prober,
    ) -> None:
        """A's Sammelbeleg asked for by the POS (``zero_receipt``) proves the unit signs:
        the prober's next round recovers B although its backoff is not over."""
        shared = units["shared"]
        shared.mode = "down"
        _sell(till, "A", "a-0")
        _sell(till, "B", "b-0")
        prober.run_once()
        clock.advance(6)
        prober.run_once()  # both probed and failed: next probes in 10 s
        shared.mode = "up"
        assert till.zero_receipt("A").result.kind == "sammelbeleg"
        assert till.outages.open_registers() == ["B"]
        clock.advance(1)
        prober.run_once()
        assert till.outages.open_registers() == []


class _Died(BaseException):
    """The process ends here (nothing after it runs, the transaction rolls back)."""


def test_a_signing_the_stopped_agent_left_is_no_failure_of_the_unit(
    chain_service: ReceiptService,
    db: TillDB,
    registry: UnitRegistry,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KASSE-1's chain signing is interrupted (the process dies while storing it): at the
    restart its receipt is stored unsigned and its outage opens, but the chain service did
    not fail, so KASSE-2 on the same service goes on signing."""

    def died(*_: object) -> None:
        raise _Died

    chain_service.init_register(RegisterSetup("KASSE-2", ["chain"]))
    with monkeypatch.context() as patch:
        patch.setattr(Issuing, "store", died)
        with pytest.raises(_Died):
            chain_service.issue(sale(request_id="r-1"))
    service = ReceiptService(db, registry, clock=clock, sign_timeout=1.5)
    assert service.outages.open_registers() == ["KASSE-1"]
    assert service.issue(sale(register="KASSE-2", request_id="r-2")).signature_state == "signed"

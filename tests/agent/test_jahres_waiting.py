"""A Jahresbeleg that waits for its unit does not hold up the Monatsbelege after it.

The Jahresbeleg (December's closing) must be signed; a Monatsbeleg may carry the failure
marker like any receipt of an outage (rksv.md 5, 6). So with the unit down from 30
December to 3 February, January's Monatsbeleg is issued on 31 January at 23:59 with the
marker, and the waiting Jahresbeleg is issued signed once the unit is back: after the
Sammelbeleg that closes the outage, dated then, with the counter of then (the chain only
goes forward). The waiting one is a ``waiting_specials`` row, apart from the register's
``last_closing``; it survives a restart, and the Schlussbeleg still waits for it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import WaitsForUnit
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import Run, db_rows, expect, sale, the_outage
from storage import TillDB

REGISTER = "KASSE-1"  # created 2 March 2026 (tests/conftest.py)
DEC_30 = dt.datetime(2026, 12, 30, 9, 0, tzinfo=dt.UTC)  # 10:00 in Vienna
DEC_31_2359 = dt.datetime(2026, 12, 31, 22, 59, 10, tzinfo=dt.UTC)  # 23:59:10 in Vienna
JAN_15 = dt.datetime(2027, 1, 15, 9, 0, tzinfo=dt.UTC)
JAN_31_2359 = dt.datetime(2027, 1, 31, 22, 59, 10, tzinfo=dt.UTC)
FEB_1 = dt.datetime(2027, 2, 1, 8, 0, tzinfo=dt.UTC)
FEB_3 = dt.datetime(2027, 2, 3, 9, 0, tzinfo=dt.UTC)  # the unit is back


def _closings(db: TillDB) -> list[tuple[int, str, str, str, str]]:
    """Number, kind, period, state and date of each Monats-/Jahresbeleg, in order."""
    rows = db_rows(
        db,
        "SELECT number, kind, json_extract(document, '$.period') AS period,"
        " signature_state, issued_at FROM receipts WHERE register_id = ?"
        " AND kind IN ('monthly', 'yearly') ORDER BY number",
        REGISTER,
    )
    return [
        (int(r["number"]), r["kind"], r["period"], r["signature_state"], r["issued_at"])
        for r in rows
    ]


def _kinds_from(db: TillDB, number: int) -> list[tuple[str, str]]:
    rows = db_rows(
        db,
        "SELECT kind, signature_state FROM receipts WHERE register_id = ? AND number >= ?"
        " ORDER BY number",
        REGISTER,
        number,
    )
    return [(r["kind"], r["signature_state"]) for r in rows]


def _last_closing(db: TillDB) -> str:
    [row] = db_rows(db, "SELECT last_closing FROM registers WHERE id = ?", REGISTER)
    return str(row["last_closing"])


def _numbers_gap_free(db: TillDB) -> None:
    rows = db_rows(
        db, "SELECT number FROM receipts WHERE register_id = ? ORDER BY number", REGISTER
    )
    assert [r["number"] for r in rows] == list(range(1, len(rows) + 1))


def _down_over_new_year(service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit) -> int:
    """March to November closed and a sale signed on 30 December; then the unit goes down,
    a sale falls back (the outage opens), and at 23:59 on 31 December the Jahresbeleg
    waits. The number of the last receipt before the outage."""
    clock.set(DEC_30)
    before = service.issue(sale(request_id="dec-signed"))
    assert before.signature_state == "signed"
    flaky.mode = "down"
    assert service.issue(sale(request_id="dec-fallback")).signature_state == "fallback"
    clock.set(DEC_31_2359)
    assert service.run_closings() == []
    assert [(w["kind"], w["period"]) for w in service.waiting(REGISTER)] == [("yearly", "2026-12")]
    return before.number


def _verify(run: Run, data_dir: Path, tmp_path: Path) -> None:
    """``till-agent export dep`` and ``crypto-container``, then ``till-agent verify``."""
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    where = ("--register", REGISTER, "--data-dir", data_dir)
    expect(run("export", "dep", "-o", dep, *where), 0)
    expect(run("export", "crypto-container", "-o", container, *where), 0)
    body = json.loads(expect(run("verify", dep, container, "--json"), 0).stdout)
    assert body["findings"] == []
    assert body["ok"] is True
    assert body["counter_checked"] is True


class TestJanuaryWhileTheJahresbelegWaits:
    def test_the_monatsbeleg_of_january_is_issued_on_time_with_the_marker(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        flaky: FlakyUnit,
        run: Run,
        data_dir: Path,
        tmp_path: Path,
    ) -> None:
        """31 January 23:59: January's Monatsbeleg (fallback) with January's counter;
        3 February: the Sammelbeleg, then the Jahresbeleg signed, and the DEP verifies."""
        before = _down_over_new_year(service, clock, flaky)
        clock.set(JAN_15)
        january_sale = service.issue(sale(request_id="jan"))
        assert january_sale.signature_state == "fallback"
        clock.set(JAN_31_2359)
        [january] = service.run_closings()
        assert (january.kind, january.signature_state) == ("monthly", "fallback")
        assert january.issued_at == "2027-01-31T23:59:10"
        assert _last_closing(service.db) == "2027-01"
        assert service.run_closings() == []  # nothing is due again, nothing issued twice
        [waiting] = service.waiting(REGISTER)
        assert (waiting["kind"], waiting["period"]) == ("yearly", "2026-12")

        clock.set(FEB_1)  # a sale of February: no closing comes before it now
        assert service.issue(sale(request_id="feb")).number == january.number + 1

        clock.set(FEB_3)
        flaky.mode = "up"
        recovered = service.recover(REGISTER)
        assert recovered is not None
        assert [(r.kind, r.signature_state) for r in recovered] == [
            ("sammelbeleg", "signed"),
            ("yearly", "signed"),
        ]
        yearly = recovered[1]
        assert yearly.issued_at == "2027-02-03T10:00:00"  # dated when it is issued
        assert _kinds_from(service.db, before + 1) == [
            ("standard", "fallback"),
            ("standard", "fallback"),
            ("monthly", "fallback"),
            ("standard", "fallback"),
            ("sammelbeleg", "signed"),
            ("yearly", "signed"),
        ]
        closings = _closings(service.db)
        assert [(k, p, s) for _, k, p, s, _ in closings[-2:]] == [
            ("monthly", "2027-01", "fallback"),
            ("yearly", "2026-12", "signed"),
        ]
        assert [p for _, _, p, _, _ in closings] == [
            *(f"2026-{m:02d}" for m in range(3, 12)),
            "2027-01",
            "2026-12",
        ]
        assert _last_closing(service.db) == "2027-01"  # the late Jahresbeleg moves it not back
        assert service.waiting(REGISTER) == []
        assert service.run_closings() == []
        assert service.recover(REGISTER) == []
        assert the_outage(service).ended_at is not None
        _numbers_gap_free(service.db)
        _verify(run, data_dir, tmp_path)

    def test_the_first_sale_after_the_month_end_issues_the_monatsbeleg_first(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """The closing job has not run since 31 January: the first sale of February issues
        January's Monatsbeleg (fallback) before itself, not the waiting Jahresbeleg."""
        _down_over_new_year(service, clock, flaky)
        clock.set(FEB_1)
        result = service.issue(sale(request_id="feb"))
        assert result.signature_state == "fallback"
        january = (result.number - 1, "monthly", "2027-01", "fallback", "2027-02-01T09:00:00")
        assert _closings(service.db)[-1] == january
        assert [w["period"] for w in service.waiting(REGISTER)] == ["2026-12"]

    def test_a_monatsbeleg_of_january_by_hand_is_issued(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """By hand on 31 January (``till-agent special KASSE-1 monthly``): January's, not
        refused as skipping the December that waits."""
        _down_over_new_year(service, clock, flaky)
        clock.set(JAN_31_2359 - dt.timedelta(hours=2))
        result = service.issue_special(REGISTER, "monthly")
        assert (result.kind, result.signature_state) == ("monthly", "fallback")
        assert _closings(service.db)[-1][1:3] == ("monthly", "2027-01")
        clock.set(JAN_31_2359)
        assert service.run_closings() == []

    def test_the_schlussbeleg_waits_for_the_jahresbeleg(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """January is closed (``last_closing`` past December) and a Sammelbeleg (POST
        zero-receipt) closed the outage, but the Jahresbeleg still waits for recovery: the
        Schlussbeleg is refused, consuming nothing; after recovery it is issued."""
        _down_over_new_year(service, clock, flaky)
        clock.set(JAN_31_2359)
        assert [r.kind for r in service.run_closings()] == ["monthly"]
        clock.set(FEB_3)
        flaky.mode = "up"
        assert service.zero_receipt(REGISTER).result.kind == "sammelbeleg"
        assert not service.outages.is_open(REGISTER)
        last = _kinds_from(service.db, 1)
        with pytest.raises(WaitsForUnit, match=r"special receipt waiting.*Schlussbeleg waits"):
            service.issue_special(REGISTER, "closing")
        assert _kinds_from(service.db, 1) == last
        assert [r.kind for r in service.recover(REGISTER) or []] == ["yearly"]
        closing = service.issue_special(REGISTER, "closing")
        assert (closing.kind, closing.signature_state) == ("closing", "signed")
        assert [k for k, _ in _kinds_from(service.db, closing.number - 2)] == [
            "sammelbeleg",
            "yearly",
            "closing",
        ]


class TestNeverTwoJahresbelege:
    def test_a_job_that_looked_before_it_waited_does_not_send_it_again(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """The job read no waiting Jahresbeleg; before it asks for December's, the unit is
        back and a Sammelbeleg (POST zero-receipt) closed the outage the Jahresbeleg's
        failure opened. The job's request is not signed: recovery issues the one that
        waits, and it is the only one."""
        _down_over_new_year(service, clock, flaky)
        clock.set(DEC_31_2359 + dt.timedelta(minutes=5))
        flaky.mode = "up"
        assert service.zero_receipt(REGISTER).result.kind == "sammelbeleg"
        last = _kinds_from(service.db, 1)
        assert service.request_special(REGISTER, "yearly", period="2026-12") is None
        assert _kinds_from(service.db, 1) == last
        assert [r.kind for r in service.recover(REGISTER) or []] == ["yearly"]
        assert [k for _, k, _, _, _ in _closings(service.db)].count("yearly") == 1
        assert service.run_closings() == []


class TestARestartWhileTheJahresbelegWaits:
    def test_the_new_process_issues_january_and_then_the_one_jahresbeleg(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        flaky: FlakyUnit,
        unit_config: UnitConfig,
        open_db: Callable[..., TillDB],
        run: Run,
        data_dir: Path,
        tmp_path: Path,
    ) -> None:
        """The agent stops on 2 January with the Jahresbeleg waiting and starts again on
        31 January (a new database connection, unit registry and service): January's
        Monatsbeleg at 23:59 with the marker, one Jahresbeleg once the unit is back."""
        _down_over_new_year(service, clock, flaky)
        service.db.close()
        restarted = _started(open_db(data_dir), unit_config, JAN_31_2359)
        assert [w["period"] for w in restarted.waiting(REGISTER)] == ["2026-12"]
        [january] = restarted.run_closings()
        assert (january.kind, january.signature_state) == ("monthly", "fallback")
        assert restarted.run_closings() == []

        _stop(restarted)
        again = _started(open_db(data_dir), unit_config, FEB_3)
        _up(again)
        recovered: list[ReceiptResult] = again.recover(REGISTER) or []
        assert [(r.kind, r.signature_state) for r in recovered] == [
            ("sammelbeleg", "signed"),
            ("yearly", "signed"),
        ]
        assert [k for _, k, _, _, _ in _closings(again.db)].count("yearly") == 1
        assert again.run_closings() == []
        assert again.waiting(REGISTER) == []
        _numbers_gap_free(again.db)
        _verify(run, data_dir, tmp_path)
        _stop(again)


def _started(db: TillDB, config: UnitConfig, now: dt.datetime) -> ReceiptService:
    """A service started on ``db`` at ``now`` with a registry of its own, its unit down."""
    registry = UnitRegistry()
    flaky = FlakyUnit(open_unit(config))
    flaky.mode = "down"
    registry.put(flaky)
    return ReceiptService(db, registry, clock=FrozenClock(now))


def _stop(service: ReceiptService) -> None:
    service.units.close()
    service.db.close()


def _up(service: ReceiptService) -> None:
    with service.db.read_connection() as conn:
        unit = service.units.get(conn, "dev")
    assert isinstance(unit, FlakyUnit)
    unit.mode = "up"

"""Monats-/Jahresbelege issued by hand (``till-agent special KASSE-1 yearly``).

A hand-issued closing takes the month it closes (the current month in the register's time
zone) and records it as the register's last closing, so the closing job does not issue a
second one for it; a second hand-issued one for a closed month is refused, consuming nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.clock import FrozenClock, SystemClock
from agent.errors import RegisterStateError
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale
from storage import TillDB

REGISTER = "KASSE-1"
DEC_1 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
DEC_31 = dt.datetime(2026, 12, 31, 9, 0, tzinfo=dt.UTC)  # 10:00 in Vienna


def _closings(db: TillDB) -> list[tuple[int, str, str | None]]:
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute(
            "SELECT number, kind, document FROM receipts WHERE register_id = ?"
            " AND kind IN ('monthly', 'yearly') ORDER BY number",
            (REGISTER,),
        )
        return [(int(n), str(k), json.loads(d).get("period")) for n, k, d in rows]
    finally:
        conn.close()


def _register(db: TillDB) -> tuple[int, str | None]:
    conn = sqlite3.connect(db.path)
    try:
        number, last = conn.execute(
            "SELECT last_number, last_closing FROM registers WHERE id = ?", (REGISTER,)
        ).fetchone()
        return int(number), last
    finally:
        conn.close()


@pytest.fixture(name="december")
def _december(bare_service: ReceiptService, clock: FrozenClock) -> ReceiptService:
    """KASSE-1 created on 1 December 2026."""
    clock.set(DEC_1)
    bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
    return bare_service


class TestHandIssuedClosings:
    def test_a_hand_issued_jahresbeleg_closes_december_and_the_job_issues_no_second(
        self, december: ReceiptService, clock: FrozenClock
    ) -> None:
        """31 December 21:00 Vienna by hand, then the job at 23:59: one Jahresbeleg only."""
        clock.set(dt.datetime(2026, 12, 31, 20, 0, tzinfo=dt.UTC))
        yearly = december.issue_special(REGISTER, "yearly")
        assert _closings(december.db) == [(yearly.number, "yearly", "2026-12")]
        assert _register(december.db) == (yearly.number, "2026-12")
        clock.set(dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC))  # 23:59:30 local
        assert december.run_closings() == []
        clock.set(dt.datetime(2027, 1, 31, 22, 59, 30, tzinfo=dt.UTC))
        [january] = december.run_closings()
        assert (january.kind, january.number) == ("monthly", yearly.number + 1)
        assert [p for *_, p in _closings(december.db)] == ["2026-12", "2027-01"]

    def test_the_period_is_the_month_in_the_register_time_zone(
        self, december: ReceiptService, clock: FrozenClock
    ) -> None:
        """23:30 UTC on 30 January is 31 January in Vienna: the month's last day, so it
        closes 2027-01 (once December is closed)."""
        clock.set(DEC_31)
        december.issue_special(REGISTER, "yearly")
        clock.set(dt.datetime(2027, 1, 30, 23, 30, tzinfo=dt.UTC))  # 31 January in Vienna
        monthly = december.issue_special(REGISTER, "monthly")
        assert _closings(december.db)[-1] == (monthly.number, "monthly", "2027-01")

    @pytest.mark.parametrize("second", ["monthly", "yearly"])
    def test_a_second_closing_of_the_same_month_is_refused(
        self, december: ReceiptService, clock: FrozenClock, second: str
    ) -> None:
        """The month is closed: refused (a fiscal refusal), no number, no journal event."""
        clock.set(DEC_31)
        december.issue_special(REGISTER, "yearly")
        before = _register(december.db)
        with pytest.raises(RegisterStateError, match="2026-12 is closed already"):
            december.issue_special(REGISTER, second)
        assert _register(december.db) == before

    def test_a_month_closed_by_the_job_is_not_closed_again_by_hand(
        self, december: ReceiptService, clock: FrozenClock
    ) -> None:
        clock.set(dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC))
        [yearly] = december.run_closings()
        with pytest.raises(RegisterStateError, match="closed already"):
            december.issue_special(REGISTER, "yearly")
        assert _register(december.db) == (yearly.number, "2026-12")

    def test_a_skipped_month_is_refused(self, december: ReceiptService, clock: FrozenClock) -> None:
        """December never closed: a January closing by hand would hide it for good."""
        clock.set(dt.datetime(2027, 1, 10, 9, 0, tzinfo=dt.UTC))
        with pytest.raises(RegisterStateError, match="from 2026-12 on are not issued yet"):
            december.issue_special(REGISTER, "monthly")
        assert [r.kind for r in december.run_closings()] == ["yearly"]
        with pytest.raises(RegisterStateError, match=r"last day \(2027-01-31\) at the earliest"):
            december.issue_special(REGISTER, "monthly")
        clock.set(dt.datetime(2027, 1, 31, 9, 0, tzinfo=dt.UTC))
        assert december.issue_special(REGISTER, "monthly").kind == "monthly"

    @pytest.mark.parametrize(
        ("moment", "kind", "message"),
        [
            # a Monatsbeleg for December would leave the year without its Jahresbeleg
            (DEC_31, "monthly", "2026-12 is closed by a Jahresbeleg, not a Monatsbeleg"),
            # a "Jahresbeleg" for another month would take December's Belegcheck
            (
                dt.datetime(2027, 1, 31, 9, 0, tzinfo=dt.UTC),
                "yearly",
                "2027-01 is closed by a Monatsbeleg, not a Jahresbeleg",
            ),
            # mid-month: the rest of the month would be missing from its closing
            (
                dt.datetime(2026, 12, 30, 22, 59, tzinfo=dt.UTC),  # 23:59 on the 30th
                "yearly",
                r"on its last day \(2026-12-31\) at the earliest",
            ),
        ],
    )
    def test_a_closing_that_does_not_fit_its_month_is_refused(
        self,
        december: ReceiptService,
        clock: FrozenClock,
        moment: dt.datetime,
        kind: str,
        message: str,
    ) -> None:
        """Refused before anything is written: no number, no journal event, no check."""
        if moment.year == 2027:  # December closed first, by the job
            clock.set(dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC))
            december.run_closings()
        clock.set(moment)
        before = _register(december.db)
        with pytest.raises(RegisterStateError, match=message):
            december.issue_special(REGISTER, kind)
        assert _register(december.db) == before

    def test_a_hand_issued_jahresbeleg_fulfils_the_waiting_one(
        self,
        december: ReceiptService,
        clock: FrozenClock,
        registry: UnitRegistry,
        unit_config: UnitConfig,
    ) -> None:
        """The job's Jahresbeleg waited for the unit; issued by hand it is done, once
        (after the Sammelbeleg of the outage its failure opened)."""
        flaky = FlakyUnit(open_unit(unit_config))
        registry.put(flaky)
        clock.set(dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC))
        flaky.mode = "down"
        assert december.run_closings() == []
        assert [w["period"] for w in december.waiting(REGISTER)] == ["2026-12"]
        flaky.mode = "up"
        assert december.zero_receipt(REGISTER).result.kind == "sammelbeleg"
        yearly = december.issue_special(REGISTER, "yearly")
        assert december.waiting(REGISTER) == []
        assert december.recover(REGISTER) == []
        assert december.run_closings() == []
        assert _closings(december.db) == [(yearly.number, "yearly", "2026-12")]
        assert december.issue(sale()).number == yearly.number + 1


@pytest.mark.usefixtures("no_system_config")
class TestHandIssuedClosingsOnTheCommandLine:
    def test_special_yearly_twice_exits_4_the_second_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``special KASSE-1 yearly`` records its month; a second one is refused, exit 4."""
        runner = CliRunner()
        data = str(tmp_path / "data")

        def run(*args: str) -> tuple[int, str]:
            result = runner.invoke(app, [*args, "--data-dir", data], prog_name="till-agent")
            return result.exit_code, result.stdout

        # the command line's own clock, at 31 December in Vienna
        monkeypatch.setattr(SystemClock, "now", lambda _self: DEC_31)
        assert run("unit", "create-software", "--id", "dev")[0] == 0
        assert run("init", REGISTER, "--unit", "dev")[0] == 0
        code, out = run("special", REGISTER, "yearly", "--json")
        assert (code, json.loads(out)["kind"]) == (0, "yearly")
        code, out = run("special", REGISTER, "yearly", "--json")
        assert code == 4
        assert json.loads(out)["error"] == "RegisterStateError"
        assert "closed already" in json.loads(out)["message"]

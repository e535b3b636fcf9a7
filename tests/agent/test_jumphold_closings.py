"""No early Monats-/Jahresbeleg after a forward jump of the wall clock.

A closing that fell due only through a jump of the wall clock that the running process
saw (the wall clock ran ahead of the boot clock) waits until the jump is an hour old on
the boot clock: a signed Jahresbeleg issued on a clock 50 days ahead would close the year
without its last 40 days, for good. Sales go on meanwhile. Closings due before the jump
(the till was off over a month end) and after a suspend are issued at once, as before.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time

import pytest

from agent.at_rksv.verify import verify_dep
from agent.clock import JUMP_SETTLE_S, FrozenClock, WallJump
from agent.closings import journal_hold, journaled_holds
from agent.errors import RegisterStateError
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService
from agent.signing.registry import UnitRegistry
from factories import db_rows, journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"
NOV_20 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)  # the real date; the register is new
DAY = 86400.0
DEC_20 = dt.datetime(2026, 12, 20, 9, 0, tzinfo=dt.UTC)
YEAR_END = dt.datetime(2026, 12, 31, 22, 59, 30, tzinfo=dt.UTC)  # 23:59:30 in Vienna


@pytest.fixture(name="clock")
def _clock() -> FrozenClock:
    return FrozenClock(NOV_20)


def _closings(db: TillDB) -> list[tuple[int, str, str, str]]:
    rows = db_rows(
        db,
        "SELECT number, kind, json_extract(document, '$.period') AS period, signature_state"
        " FROM receipts WHERE register_id = ? AND kind IN ('monthly', 'yearly') ORDER BY number",
        REGISTER,
    )
    return [(r["number"], r["kind"], r["period"], r["signature_state"]) for r in rows]


def _jump_ahead(clock: FrozenClock, days: float = 50) -> None:
    """A minute passes, then the wall clock jumps ``days`` ahead (a bad RTC or NTP)."""
    clock.advance(60)
    clock.jump(days * DAY)


def _held_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and "jump of the wall clock" in r.getMessage()
    ]


class TestAJumpAcrossTheYearEnd:
    def test_neither_the_timer_nor_a_sale_issues_a_closing(
        self, service: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """+50 days on 20 November: run_closings() issues nothing, the sales go on without a
        closing before them, and the wait is journaled and logged once (not per sale)."""
        service.issue(sale(request_id="before"))
        _jump_ahead(clock)
        assert service.run_closings() == []
        numbers = [service.issue(sale(request_id=f"during-{n}")).number for n in range(3)]
        assert numbers == [3, 4, 5]
        assert service.run_closings() == []
        assert _closings(service.db) == []
        [held] = journal_events(service.db, "closing.held")
        assert held["periods"] == ["2026-11", "2026-12"]
        assert held["jump_seconds"] == pytest.approx(50 * DAY)
        alerts = [a for a in journal_events(service.db, "alert.raised") if "closing" in str(a)]
        assert [(a["level"], a["alert"]) for a in alerts] == [("error", "closing-held")]
        [error] = _held_errors(caplog)
        assert "Monatsbeleg 2026-11, Jahresbeleg 2026-12" in error
        assert "+4320000 s" in error

    def test_after_the_clock_went_back_the_real_year_end_issues_the_jahresbeleg_once(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """NTP sets the clock back 10 minutes later: nothing was issued early, the real
        December sales come before the closings, and 31 December 23:59 in Vienna issues
        the Monatsbeleg and the signed Jahresbeleg, once."""
        _jump_ahead(clock)
        assert service.run_closings() == []
        clock.advance(600)
        clock.jump(-50 * DAY)
        assert service.run_closings() == []
        service.issue(sale(request_id="december"))
        clock.set(YEAR_END)  # 41 days pass
        issued = service.run_closings()
        assert [(r.kind, r.signature_state) for r in issued] == [
            ("monthly", "signed"),
            ("yearly", "signed"),
        ]
        assert service.run_closings() == []
        assert service.issue(sale(request_id="silvester")).number == issued[-1].number + 1
        assert [c[1:3] for c in _closings(service.db)] == [
            ("monthly", "2026-11"),
            ("yearly", "2026-12"),
        ]
        december = db_rows(service.db, "SELECT number FROM receipts WHERE request_id = 'december'")
        assert december[0]["number"] < issued[0].number  # its turnover is in the year

    def test_a_jump_corrected_before_the_year_end_does_not_hold_it(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Ahead at 23:30 on 31 December, set back at 23:40: the year end that comes at
        23:59, by time passing, is not held (the Jahresbeleg before the new year's sales)."""
        clock.set(YEAR_END - dt.timedelta(minutes=29, seconds=30))
        assert [r.kind for r in service.run_closings()] == ["monthly"]  # November's
        _jump_ahead(clock)
        assert service.run_closings() == []
        clock.advance(540)
        clock.jump(-50 * DAY)
        assert service.run_closings() == []
        clock.set(YEAR_END)
        assert [r.kind for r in service.run_closings()] == ["yearly"]
        assert service.run_closings() == []
        assert [c[1:3] for c in _closings(service.db)] == [
            ("monthly", "2026-11"),
            ("yearly", "2026-12"),
        ]

    def test_a_jump_landing_minutes_before_the_year_end_holds_it(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Really 20 December, a mistyped date puts the clock at 31 December 23:50: the
        year end that comes 10 minutes later, by time passing after the jump, is held as
        one the jump reached (the clock is 11 days ahead all the same); an hour after the
        jump the Jahresbeleg comes, once."""
        clock.set(DEC_20)
        assert [r.kind for r in service.run_closings()] == ["monthly"]  # November's
        clock.advance(60)
        clock.jump((YEAR_END - dt.timedelta(minutes=9, seconds=30) - clock.now()).total_seconds())
        assert service.run_closings() == []  # 23:50: nothing due yet
        clock.advance(600)  # 00:00 on the clock, 10 minutes after the jump
        assert service.run_closings() == []
        assert service.issue(sale(request_id="new-year")).kind == "standard"
        assert [c[1:3] for c in _closings(service.db)] == [("monthly", "2026-11")]
        [held] = journal_events(service.db, "closing.held")
        assert (held["periods"], held["capped"]) == (["2026-12"], False)
        clock.advance(JUMP_SETTLE_S - 600)
        assert [r.kind for r in service.run_closings()] == ["yearly"]
        assert service.run_closings() == []

    def test_a_restart_keeps_the_hold_of_a_year_end_reached_after_the_jump(
        self, service: ReceiptService, clock: FrozenClock, db: TillDB, registry: UnitRegistry
    ) -> None:
        """The journaled hold of a jump to 23:50 covers the year end at 23:59 that time
        reached after it: a service restarted at 00:05, in the same boot, holds it too."""
        clock.set(DEC_20)
        service.run_closings()
        clock.advance(60)
        clock.jump((YEAR_END - dt.timedelta(minutes=9, seconds=30) - clock.now()).total_seconds())
        assert service.run_closings() == []
        clock.advance(600)
        assert service.run_closings() == []  # journals the hold
        clock.advance(300)
        restarted = ReceiptService(db, registry, clock=clock)
        assert restarted.run_closings() == []
        assert len(journal_events(db, "closing.held")) == 1
        clock.advance(JUMP_SETTLE_S - 900)
        assert [r.kind for r in restarted.run_closings()] == ["yearly"]

    def test_a_suspend_across_the_year_end_is_no_jump(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The machine slept 50 days (wall and boot clocks moved alike): the closings the
        till missed are issued at once, as before."""
        clock.suspend(50 * DAY)
        assert [r.kind for r in service.run_closings()] == ["monthly", "yearly"]

    def test_an_ntp_step_of_minutes_is_trusted_at_once(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """A step of 5 minutes (more than the 2-minute tolerance, less than the hour a hold
        lasts) at 23:56:30 on 31 December: the year end it reaches is trusted, the closings
        come at once (holding them would delay them more than the step moved them)."""
        clock.set(YEAR_END - dt.timedelta(minutes=3))
        assert [r.kind for r in service.run_closings()] == ["monthly"]  # November's
        clock.jump(300)
        assert [r.kind for r in service.run_closings()] == ["yearly"]
        assert journal_events(service.db, "closing.held") == []


class TestAJumpThatStays:
    @pytest.mark.parametrize("by", ["timer", "sale"])
    def test_the_closings_come_after_the_settle_period_in_order_signed(
        self, service: ReceiptService, clock: FrozenClock, by: str
    ) -> None:
        """The clock was behind and the jump corrected it: an hour of boot time later the
        clock still says the year is over, and the closings come (from the timer or before
        the next sale), in order, signed; the DEP export verifies."""
        service.issue(sale(request_id="november"))
        _jump_ahead(clock)
        service.issue(sale(request_id="held-1"))
        clock.advance(JUMP_SETTLE_S - 60)
        assert service.run_closings() == []
        service.issue(sale(request_id="held-2"))
        clock.advance(60)
        if by == "timer":
            assert [r.kind for r in service.run_closings()] == ["monthly", "yearly"]
        after = service.issue(sale(request_id="after"))
        assert _closings(service.db) == [
            (5, "monthly", "2026-11", "signed"),
            (6, "yearly", "2026-12", "signed"),
        ]
        assert after.number == 7
        assert service.run_closings() == []
        assert len(journal_events(service.db, "closing.held")) == 1
        buffer = io.StringIO()
        export_dep(service.db, REGISTER, buffer)
        container = json.loads(export_container(service.db, REGISTER))
        assert verify_dep(json.loads(buffer.getvalue()), container).findings == []

    def test_a_restart_during_the_hold_keeps_it(
        self, service: ReceiptService, clock: FrozenClock, db: TillDB, registry: UnitRegistry
    ) -> None:
        """A service restarted in the same boot (an operator who saw the ERROR, systemd
        after a failure) takes the journaled hold over: nothing is issued until the jump
        is an hour old, nothing is journaled twice; then the closings come."""
        _jump_ahead(clock)
        assert service.run_closings() == []
        clock.advance(600)
        restarted = ReceiptService(db, registry, clock=clock)
        assert restarted.run_closings() == []
        restarted.issue(sale(request_id="after-restart"))
        assert _closings(db) == []
        assert len(journal_events(db, "closing.held")) == 1
        clock.advance(JUMP_SETTLE_S - 600)
        assert [r.kind for r in restarted.run_closings()] == ["monthly", "yearly"]

    @pytest.mark.parametrize("boot_clock", ["behind", "ahead"])
    def test_a_restart_in_another_boot_issues_at_once(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        db: TillDB,
        registry: UnitRegistry,
        boot_clock: str,
    ) -> None:
        """After a reboot no process has seen the jump: the clock it starts with is all it
        knows (README, Outages). The boot's id tells the boots apart, also when the new
        boot clock has passed the journaled one (the jump came a minute after the boot
        before, the service starts 6 minutes after this one)."""
        _jump_ahead(clock)
        assert service.run_closings() == []
        rebooted = FrozenClock(clock.now())  # a new boot id; its boot clock starts at 1000 s
        if boot_clock == "ahead":
            rebooted.advance(360)  # 300 s past the journaled boot clock
            assert rebooted.boottime() - journal_events(db, "closing.held")[0]["boot"] == 300
        restarted = ReceiptService(db, registry, clock=rebooted)
        assert [r.kind for r in restarted.run_closings()] == ["monthly", "yearly"]

    def test_the_sale_path_stays_fast_during_the_hold(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """A sale during the hold does not wait for it, nor look up the register's
        closings again: as fast as a sale before the jump (within noise)."""
        service.issue(sale(request_id="warm"))
        before = _time_sales(service, "before", 40)
        _jump_ahead(clock)
        service.issue(sale(request_id="first-held"))  # journals the hold
        during = _time_sales(service, "during", 40)
        assert _closings(service.db) == []
        assert during < 2 * before + 0.5, (before, during)


class TestAHandIssuedClosingDuringTheHold:
    def test_it_is_refused_unless_confirmed(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The clock jumped to 30 November: a Monatsbeleg by hand on that "last day" is
        refused, naming the rule; confirmed (``--yes``) it is issued."""
        clock.jump(10 * DAY + 3600)  # 30 November, 11:00 in Vienna
        with pytest.raises(RegisterStateError, match=r"clock-jump-hold") as refused:
            service.issue_special(REGISTER, "monthly")
        assert "jumped +867600 s" in str(refused.value)
        assert _closings(service.db) == []
        issued = service.issue_special(REGISTER, "monthly", confirmed=True)
        assert (issued.kind, issued.signature_state) == ("monthly", "signed")

    def test_after_the_settle_period_it_is_issued(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """An hour of boot time after the jump the clock counts as settled."""
        clock.jump(10 * DAY + 3600)
        service.run_closings()
        clock.advance(JUMP_SETTLE_S)
        assert service.issue_special(REGISTER, "monthly").kind == "monthly"

    def test_a_new_process_refuses_it_from_the_journal(
        self, service: ReceiptService, clock: FrozenClock, db: TillDB, registry: UnitRegistry
    ) -> None:
        """The command line runs in a process of its own: the hold the service journaled
        (the same boot, under an hour ago) refuses it there too; a boot clock behind the
        journaled one is another boot, whose process saw no jump."""
        clock.set(DEC_20)
        assert [r.kind for r in service.run_closings()] == ["monthly"]  # November's
        clock.jump((YEAR_END - DEC_20).total_seconds())
        assert service.run_closings() == []
        command = ReceiptService(db, registry, clock=clock)
        with pytest.raises(RegisterStateError, match=r"clock-jump-hold"):
            command.issue_special(REGISTER, "yearly")
        rebooted = FrozenClock(clock.now())  # its boot clock starts again at 1000 s
        clock.advance(10)
        assert ReceiptService(db, registry, clock=rebooted).issue_special(REGISTER, "yearly")

    def test_a_new_process_of_another_boot_whose_boot_clock_is_ahead_issues_it(
        self, service: ReceiptService, clock: FrozenClock, db: TillDB, registry: UnitRegistry
    ) -> None:
        """A reboot whose boot clock has passed the journaled one (the boot clock alone
        would call it the same boot, 10 s after the hold): its command issues the
        Jahresbeleg, as the command of a boot that saw no jump."""
        clock.set(DEC_20)
        service.run_closings()
        clock.jump((YEAR_END - DEC_20).total_seconds())
        assert service.run_closings() == []
        clock.advance(10)
        clock.boot_id = "the-next-boot"
        command = ReceiptService(db, registry, clock=clock)
        assert command.issue_special(REGISTER, "yearly").kind == "yearly"


class TestTheJournaledHold:
    """What another process of the boot (the command line, a restarted service) reads."""

    @pytest.mark.parametrize("capped", [False, True])
    def test_it_covers_what_the_watch_covers(
        self, service: ReceiptService, clock: FrozenClock, capped: bool
    ) -> None:
        """A jump to 23:50 journaled as seen covers the year end that came at 23:59 by time
        passing; capped by a jump back to 23:50, it does not (the clock was corrected)."""
        before = DEC_20
        after = YEAR_END - dt.timedelta(minutes=9, seconds=30)
        jump = WallJump(before, after, (after - before).total_seconds(), 1000.0, capped=capped)
        with service.db.write_connection().transaction() as conn:
            journal_hold(
                conn, REGISTER, ["2026-12"], jump, after.isoformat(), boot_id=clock.boot_id
            )
        clock.advance(600)
        with service.db.read_connection() as conn:
            [(_, resumed)] = journaled_holds(conn, clock)
        assert resumed == jump
        assert resumed.covers(YEAR_END) is not capped
        assert jump.covers(YEAR_END) is not capped


def _time_sales(service: ReceiptService, prefix: str, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        service.issue(sale(request_id=f"{prefix}-{n}"))
    return time.perf_counter() - started

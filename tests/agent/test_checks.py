"""The checks the operator owes after a Startbeleg and a Jahresbeleg (rksv.md section 6):
obligations created with their receipt, reminded by the timer once each, recorded once."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REGISTER, UNIT

from agent.api import create_app, serve
from agent.api_backend import ServiceBackend
from agent.checks import CHECK_KINDS, CheckWatch, load_checks, record_check
from agent.clock import FrozenClock
from agent.errors import InvalidSale, NotFound
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.flaky import FlakyUnit
from factories import Run, db_rows, expect, flat, journal_events, sale, to_closing_day
from storage import DB_FILE, TillDB, make_engine
from storage.migrate import downgrade_to

UTC = dt.UTC
START_ISO = "2026-03-02T10:00:00+00:00"  # the clock of the conftest's service


def _at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _checks(service: ReceiptService, *, done: bool = False) -> list[tuple[str, int, str]]:
    with service.db.read_connection() as conn:
        return [(c.kind, c.year, c.due_date.isoformat()) for c in load_checks(conn, done=done)]


def _alerts(db: TillDB) -> list[tuple[str, str]]:
    """The check reminders journaled: (alert, level), oldest first."""
    return [
        (str(e["alert"]), str(e["level"]))
        for e in journal_events(db, "alert.raised")
        if str(e["alert"]).startswith("check-")
    ]


def _new_year(service: ReceiptService, clock: FrozenClock) -> None:
    """23:59:30 on 31 December 2026 in Vienna: the month closings up to the Jahresbeleg."""
    clock.set(_at(2026, 12, 31, 22, 59, 30))
    service.run_closings()


@pytest.fixture(name="checks")
def _checks_watch(service: ReceiptService, clock: FrozenClock) -> CheckWatch:
    return CheckWatch(service.db, clock)


class TestObligations:
    def test_a_startbeleg_makes_a_check_due_a_week_later(self, service: ReceiptService) -> None:
        """The Startbeleg of 2 March is journaled with its check, due 9 March, right after
        the receipt's own event (one transaction)."""
        assert _checks(service) == [("start", 2026, "2026-03-09")]
        rows = db_rows(service.db, "SELECT kind, data FROM journal ORDER BY seq")
        kinds = [row["kind"] for row in rows]
        due = kinds.index("check.due")
        assert kinds[due - 1] == "receipt.issued"
        assert json.loads(rows[due]["data"]) == {
            "check": 1,
            "kind": "start",
            "year": 2026,
            "number": 1,
            "due": "2026-03-09",
        }

    def test_the_due_date_is_the_local_date_of_the_startbeleg(
        self, bare_service: ReceiptService, clock: FrozenClock
    ) -> None:
        """23:30 UTC on 31 December is already 1 January in Vienna: the register's year
        and date count, not UTC's."""
        clock.set(_at(2026, 12, 31, 23, 30))
        bare_service.init_register(RegisterSetup(REGISTER, [UNIT]))
        assert _checks(bare_service) == [("start", 2027, "2027-01-08")]

    def test_a_startbeleg_that_waited_makes_its_check_when_issued(
        self, bare_service: ReceiptService, bare_flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """No check while the Startbeleg waits; recovery two days later issues it, and the
        week counts from that Startbeleg's date."""
        bare_flaky.mode = "down"
        assert bare_service.init_register_or_wait(RegisterSetup(REGISTER, [UNIT])) is None
        assert _checks(bare_service) == []
        clock.advance(2 * 86400)
        bare_flaky.mode = "up"
        assert bare_service.recover(REGISTER) is not None
        assert _checks(bare_service) == [("start", 2026, "2026-03-11")]

    def test_the_jahresbeleg_makes_a_check_due_15_february(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """December's closing is the Jahresbeleg: its check is due by 15 February 2027;
        the Monatsbelege before it owe none."""
        _new_year(service, clock)
        assert _checks(service) == [("start", 2026, "2026-03-09"), ("yearly", 2026, "2027-02-15")]
        [event] = [e for e in journal_events(service.db, "check.due") if e["kind"] == "yearly"]
        [number] = db_rows(service.db, "SELECT number FROM receipts WHERE kind = 'yearly'")
        assert event["number"] == number[0]

    def test_a_jahresbeleg_that_waits_makes_its_check_only_when_signed(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock
    ) -> None:
        """The unit is down at the year end: the Jahresbeleg waits and owes nothing yet;
        signed in January by recovery, its check is for 2026, due 15 February 2027."""
        flaky.mode = "down"
        _new_year(service, clock)
        assert [w["kind"] for w in service.waiting()] == ["yearly"]
        assert [c[0] for c in _checks(service)] == ["start"]
        clock.set(_at(2027, 1, 4, 8, 0))
        flaky.mode = "up"
        assert service.recover(REGISTER) is not None
        assert _checks(service)[1] == ("yearly", 2026, "2027-02-15")


class TestReminders:
    def test_each_reminder_fires_once_even_when_the_till_is_idle(
        self,
        service: ReceiptService,
        checks: CheckWatch,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """No sale at all: ticks raise `created` (INFO), `approaching` two days before the
        due date (WARNING) and `overdue` after it (ERROR), each once however many ticks."""
        caplog.set_level(logging.INFO, logger="agent.checks")
        moments = [
            (_at(2026, 3, 2, 10, 1), [(1, "created")]),
            (_at(2026, 3, 6, 22, 59), []),  # 6 March 23:59 in Vienna
            (_at(2026, 3, 6, 23, 0), [(1, "approaching")]),  # 7 March 00:00: due in 2 days
            (_at(2026, 3, 9, 22, 59), []),  # the due date itself
            (_at(2026, 3, 9, 23, 0), [(1, "overdue")]),  # 10 March 00:00 in Vienna
            (_at(2026, 4, 1, 0, 0), []),
        ]
        for moment, raised in moments:
            clock.set(moment)
            assert checks.tick() == raised, moment
            assert checks.tick() == []
        assert _alerts(service.db) == [
            ("check-created", "info"),
            ("check-approaching", "warning"),
            ("check-overdue", "error"),
        ]
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in lines] == [logging.INFO, logging.WARNING, logging.ERROR]
        assert all("check the Startbeleg (number 1)" in text for _, text in lines)
        assert "no check is recorded: overdue" in lines[2][1]
        assert "till-agent checks done KASSE-1 start --year 2026 --reference" in lines[2][1]

    def test_a_tick_with_nothing_due_writes_nothing(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        open_db: Callable[..., TillDB],
        data_dir: Path,
    ) -> None:
        """The timer ticks every minute and almost always finds nothing: such a tick reads
        and opens no write transaction (no commit, the journal and the checks as they
        were); a reminder that falls due is still recorded once, also across a restart."""
        clock.set(_at(2026, 3, 2, 10, 1))
        assert CheckWatch(service.db, clock).tick() == [(1, "created")]
        service.db.close()  # a restart
        db = open_db(data_dir)
        writer = db.write_connection()
        checks = CheckWatch(db, clock)

        def stored() -> tuple[int, list[tuple[object, ...]], list[tuple[object, ...]]]:
            journal = [tuple(r) for r in db_rows(db, "SELECT seq, hash FROM journal")]
            return writer.commits, journal, [tuple(r) for r in db_rows(db, "SELECT * FROM checks")]

        before = stored()
        for moment in [_at(2026, 3, 2, 10, 2), _at(2026, 3, 6, 22, 59)]:  # 6 March in Vienna
            clock.set(moment)
            assert checks.tick() == []
            assert stored() == before
        clock.set(_at(2026, 3, 6, 23, 0))  # 7 March: two days before the due date
        assert checks.tick() == [(1, "approaching")]
        assert writer.commits == 1
        assert CheckWatch(db, clock).tick() == []  # restarted again: nothing twice
        assert checks.tick() == []
        assert writer.commits == 1
        assert _alerts(db) == [("check-created", "info"), ("check-approaching", "warning")]

    def test_a_check_recorded_between_the_read_and_the_write_is_not_reminded(
        self, service: ReceiptService, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The tick reads on a reader, then writes; the operator records the check in
        between (over the API, say): the write phase reads again and reminds nothing."""
        clock.set(_at(2026, 3, 2, 10, 1))
        checks = CheckWatch(service.db, clock)
        assert checks.tick() == [(1, "created")]
        clock.set(_at(2026, 3, 6, 23, 0))  # the "approaching" reminder is due
        read = service.db.read_connection

        @contextlib.contextmanager
        def then_recorded() -> Iterator[sqlite3.Connection]:
            with read() as conn:
                yield conn
            record_check(service.db.write_connection(), clock, REGISTER, "start", None, "BC-1")

        monkeypatch.setattr(service.db, "read_connection", then_recorded)
        assert checks.tick() == []
        assert _alerts(service.db) == [("check-created", "info")]

    def test_a_till_without_checks_never_writes_on_a_tick(
        self, bare_service: ReceiptService, clock: FrozenClock
    ) -> None:
        """No register yet, so nothing to adopt or remind: ticks begin no transaction."""
        writer = bare_service.db.write_connection()
        before = writer.commits  # the unit's setup
        checks = CheckWatch(bare_service.db, clock)
        for _ in range(3):
            assert checks.tick() == []
        assert writer.commits == before

    @pytest.mark.parametrize(
        ("start", "warn", "overdue"),
        [
            # spring forward on 29 March: the warning midnight is CEST, the Startbeleg CET
            (_at(2026, 3, 25, 10), _at(2026, 3, 29, 22), _at(2026, 4, 1, 22)),
            # fall back on 25 October: warning midnight in CEST, overdue midnight in CET
            (_at(2026, 10, 20, 10), _at(2026, 10, 24, 22), _at(2026, 10, 27, 23)),
        ],
        ids=["spring", "autumn"],
    )
    def test_reminders_follow_vienna_midnight_across_dst(
        self,
        bare_service: ReceiptService,
        clock: FrozenClock,
        start: dt.datetime,
        warn: dt.datetime,
        overdue: dt.datetime,
    ) -> None:
        """Warning and overdue come at local midnight, whatever the offset did since the
        Startbeleg (a week of UTC hours would be an hour off across the change)."""
        clock.set(start)
        bare_service.init_register(RegisterSetup(REGISTER, [UNIT]))
        checks = CheckWatch(bare_service.db, clock)
        second = dt.timedelta(seconds=1)
        for moment, raised in [
            (start, ["created"]),
            (warn - second, []),
            (warn, ["approaching"]),
            (overdue - second, []),
            (overdue, ["overdue"]),
        ]:
            clock.set(moment)
            assert [level for _, level in checks.tick()] == raised, moment

    def test_the_yearly_check_is_overdue_after_15_february_in_vienna(
        self, service: ReceiptService, checks: CheckWatch, clock: FrozenClock
    ) -> None:
        """15 February 2027 is the last day: overdue from 00:00 CET on the 16th (23:00 UTC)."""
        record_check(service.db.write_connection(), clock, REGISTER, "start", None, "BC-1")
        _new_year(service, clock)
        clock.set(_at(2027, 2, 15, 22, 59, 59))
        assert [level for _, level in checks.tick()] == ["created", "approaching"]
        clock.set(_at(2027, 2, 15, 23, 0))
        assert checks.tick() == [(2, "overdue")]

    def test_reminders_missed_while_the_till_was_off_are_caught_up(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The till was off from the Startbeleg until after the due date: the first tick
        of the next start raises every reminder it missed, in order, once."""
        clock.set(_at(2026, 3, 20, 8, 0))
        checks = CheckWatch(service.db, clock)
        assert [level for _, level in checks.tick()] == ["created", "approaching", "overdue"]
        again = CheckWatch(service.db, clock)  # a restart
        assert again.tick() == []
        assert len(_alerts(service.db)) == 3

    def test_a_recorded_check_is_not_reminded(
        self, service: ReceiptService, checks: CheckWatch, clock: FrozenClock
    ) -> None:
        record_check(service.db.write_connection(), clock, REGISTER, "start", 2026, "BC-1")
        clock.set(_at(2026, 6, 1))
        assert checks.tick() == []
        assert _alerts(service.db) == []


class TestRecording:
    def test_the_reference_is_recorded_once_and_journaled(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The same reference again changes nothing; another one is refused, naming the
        one recorded; the journal has one `check.done`."""
        writer = service.db.write_connection()
        done = record_check(writer, clock, REGISTER, "start", None, "BC-4711")
        assert (done.reference, done.failed, done.done_at) == ("BC-4711", False, START_ISO)
        assert record_check(writer, clock, REGISTER, "start", 2026, "BC-4711") == done
        with pytest.raises(InvalidSale, match="BC-4711") as refused:
            record_check(writer, clock, REGISTER, "start", None, "BC-4712")
        assert refused.value.rule == "already-reported"
        with pytest.raises(InvalidSale) as failed_later:
            record_check(writer, clock, REGISTER, "start", None, "BC-4711", failed=True)
        assert failed_later.value.rule == "already-reported"
        assert journal_events(service.db, "check.done") == [
            {"check": 1, "kind": "start", "year": 2026, "reference": "BC-4711", "failed": False}
        ]
        assert _checks(service) == []
        assert _checks(service, done=True) == [("start", 2026, "2026-03-09")]

    @pytest.mark.parametrize(
        ("register", "kind", "year", "reference", "error", "rule"),
        [
            (REGISTER, "yearly", 2026, "BC-1", NotFound, None),  # no Jahresbeleg yet
            (REGISTER, "start", 2025, "BC-1", NotFound, None),
            ("KASSE-9", "start", None, "BC-1", NotFound, None),
            (REGISTER, "yearly", None, "BC-1", InvalidSale, "required"),
            (REGISTER, "start", None, "  ", InvalidSale, "required"),
            (REGISTER, "start", None, "B" * 201, InvalidSale, "max-length"),
            (REGISTER, "start", None, "BC-1\nERROR a forged log line", InvalidSale, "format"),
            (REGISTER, "start", None, "BC-1\x1b[2K", InvalidSale, "format"),
            (REGISTER, "start", None, "BC-\u202e1", InvalidSale, "format"),
            (REGISTER, "monthly", 2026, "BC-1", InvalidSale, "check-kind"),
        ],
    )
    def test_bad_requests_are_refused_naming_the_field(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        register: str,
        kind: str,
        year: int | None,
        reference: str,
        error: type[Exception],
        rule: str | None,
    ) -> None:
        with pytest.raises(error) as refused:
            record_check(service.db.write_connection(), clock, register, kind, year, reference)
        assert rule is None or getattr(refused.value, "rule", None) == rule
        assert journal_events(service.db, "check.done") == []

    def test_a_failed_check_raises_an_error_alert(
        self, service: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The Belegcheck failed: recorded (the obligation is met), and an ERROR alert
        says the register counts as "unit failed"."""
        caplog.set_level(logging.ERROR, logger="agent.checks")
        writer = service.db.write_connection()
        done = record_check(writer, clock, REGISTER, "start", None, "BC-9", failed=True)
        assert done.failed
        assert _alerts(service.db) == [("check-failed", "error")]
        [alert] = journal_events(service.db, "alert.raised")
        assert alert["reason"] == 'the register counts as "unit failed" (rksv.md section 6)'
        [line] = [r.getMessage() for r in caplog.records]
        assert 'FAILED (reference BC-9): the register counts as "unit failed"' in line

    def test_a_failed_check_stays_in_the_status_until_a_check_passes(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Support must see a register that counts as "unit failed": the failed check is in
        `open_checks` of the status and in `checks list` (not only with --all); the passing
        recheck takes it out. The reminders still treat it as recorded."""
        writer = service.db.write_connection()
        record_check(writer, clock, REGISTER, "start", None, "BC-9", failed=True)

        def shown() -> list[tuple[str | None, bool]]:
            [register] = ServiceBackend(service).status().model_dump(mode="json")["registers"]
            return [(c["reference"], c["failed"]) for c in register["open_checks"]]

        assert shown() == [("BC-9", True)]
        with service.db.read_connection() as conn:
            assert load_checks(conn) == []  # nothing left to remind of
        record_check(writer, clock, REGISTER, "start", None, "BC-10")
        assert shown() == []

    def test_the_lines_of_a_yearly_check_name_the_jahresbeleg(
        self,
        service: ReceiptService,
        checks: CheckWatch,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Its reminder and its failure name the Jahresbeleg with its year and number."""
        record_check(service.db.write_connection(), clock, REGISTER, "start", None, "BC-1")
        _new_year(service, clock)
        [number] = db_rows(service.db, "SELECT number FROM receipts WHERE kind = 'yearly'")
        caplog.set_level(logging.INFO, logger="agent.checks")
        assert checks.tick() == [(2, "created")]
        writer = service.db.write_connection()
        record_check(writer, clock, REGISTER, "yearly", 2026, "BC-2", failed=True)
        created, failed = [r.getMessage() for r in caplog.records]
        receipt = f"Jahresbeleg 2026 (number {number[0]})"
        assert f"check the {receipt} with the BMF Belegcheck app" in created
        assert f"the Belegcheck of its {receipt} FAILED (reference BC-2)" in failed


class TestRecheck:
    def test_a_passing_check_with_a_new_reference_follows_a_failed_one(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """The operator fixes the cause of a failed Belegcheck and checks again: the passing
        check is recorded as its own `check.done`, the failed one stays in the journal, and
        the obligation is done with the new reference."""
        writer = service.db.write_connection()
        record_check(writer, clock, REGISTER, "start", None, "BC-1", failed=True)
        clock.set(_at(2026, 3, 3, 9))
        passed = record_check(writer, clock, REGISTER, "start", None, "BC-2")
        assert (passed.reference, passed.failed) == ("BC-2", False)
        assert passed.done_at == "2026-03-03T09:00:00+00:00"
        assert [
            (e["reference"], e["failed"]) for e in journal_events(service.db, "check.done")
        ] == [
            ("BC-1", True),
            ("BC-2", False),
        ]
        assert _alerts(service.db) == [("check-failed", "error")]
        with service.db.read_connection() as conn:
            [stored] = load_checks(conn, done=True)
        assert (stored.reference, stored.failed) == ("BC-2", False)
        assert _checks(service) == []

    def test_a_repeat_changes_nothing_and_a_passed_check_stays_final(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """After the recheck the same reference again changes nothing; the passed check can
        neither fail later nor get another reference; the failed reference cannot pass."""
        writer = service.db.write_connection()
        record_check(writer, clock, REGISTER, "start", None, "BC-1", failed=True)
        with pytest.raises(InvalidSale, match="new reference") as same:
            record_check(writer, clock, REGISTER, "start", None, "BC-1")
        assert same.value.rule == "already-reported"
        passed = record_check(writer, clock, REGISTER, "start", None, "BC-2")
        assert record_check(writer, clock, REGISTER, "start", None, "BC-2") == passed
        for reference, failed in [("BC-2", True), ("BC-3", True), ("BC-3", False)]:
            with pytest.raises(InvalidSale, match="BC-2") as refused:
                record_check(writer, clock, REGISTER, "start", None, reference, failed=failed)
            assert refused.value.rule == "already-reported"
        assert len(journal_events(service.db, "check.done")) == 2


class TestAdoption:
    @pytest.fixture(name="upgraded")
    def _upgraded(
        self, service: ReceiptService, open_db: Callable[..., TillDB], data_dir: Path
    ) -> Callable[[], TillDB]:
        """The till brought back to the schema before checks (0003) and opened again."""

        def upgraded() -> TillDB:
            service.db.close()
            engine = make_engine(data_dir / DB_FILE)
            downgrade_to(engine, "0003")
            engine.dispose()
            return open_db(data_dir)

        return upgraded

    def test_a_register_from_before_the_upgrade_gets_its_open_check(
        self, upgraded: Callable[[], TillDB], clock: FrozenClock
    ) -> None:
        """Upgraded four days after its Startbeleg: the first tick adopts the check (due
        9 March), journals it and reminds of it; the next ticks adopt nothing again."""
        db = upgraded()
        assert db_rows(db, "SELECT count(*) FROM checks")[0][0] == 0
        before = len(journal_events(db, "check.due"))
        clock.set(_at(2026, 3, 6, 9, 0))
        checks = CheckWatch(db, clock)
        assert [level for _, level in checks.tick()] == ["created"]
        assert checks.tick() == []
        assert len(journal_events(db, "check.due")) == before + 1
        assert [tuple(r) for r in db_rows(db, "SELECT kind, due_date FROM checks")] == [
            ("start", "2026-03-09")
        ]

    def test_a_check_clearly_past_is_not_adopted(
        self, upgraded: Callable[[], TillDB], clock: FrozenClock
    ) -> None:
        """Upgraded a month after the Startbeleg: it was registered long ago (it has been
        selling), so no check and no ERROR about something nobody can act on."""
        db = upgraded()
        clock.set(_at(2026, 4, 2, 9, 0))
        assert CheckWatch(db, clock).tick() == []
        assert db_rows(db, "SELECT count(*) FROM checks")[0][0] == 0

    @pytest.mark.parametrize(
        ("upgrade_at", "adopted"),
        [(_at(2027, 2, 15, 12), [("yearly", 2026)]), (_at(2027, 2, 16, 12), [])],
        ids=["on-15-february", "after-it"],
    )
    def test_a_jahresbeleg_is_adopted_until_its_15_february(
        self,
        service: ReceiptService,
        upgraded: Callable[[], TillDB],
        clock: FrozenClock,
        upgrade_at: dt.datetime,
        adopted: list[tuple[str, int]],
    ) -> None:
        _new_year(service, clock)
        db = upgraded()
        clock.set(upgrade_at)
        CheckWatch(db, clock).tick()
        rows = db_rows(db, "SELECT kind, year FROM checks")
        assert [tuple(r) for r in rows] == adopted


class TestCommandLine:
    def test_list_and_done(self, run: Run, till: Path) -> None:
        """`checks list` shows the open check; `checks done` records it (exit 0, the same
        again too), another reference is exit 3, an unknown check exit 6; `--all` then
        shows it done."""
        listed = json.loads(expect(run("checks", "list", "--data-dir", till, "--json"), 0).stdout)
        [check] = listed
        assert (check["register"], check["kind"], check["number"]) == (REGISTER, "start", 1)
        assert check["reference"] is None
        year = str(check["year"])
        args = ("checks", "done", REGISTER, "start", "--year", year, "--data-dir", till)
        done = json.loads(expect(run(*args, "--reference", "BC-1", "--json"), 0).stdout)
        assert (done["reference"], done["failed"]) == ("BC-1", False)
        expect(run(*args, "--reference", "BC-1"), 0)
        refused = expect(run(*args, "--reference", "BC-2"), 3)
        assert "already-reported" in refused.stderr
        yearly = ("checks", "done", REGISTER, "yearly", "--year", year, "--reference", "x")
        expect(run(*yearly, "--data-dir", till), 6)
        still = expect(run("checks", "list", "--data-dir", till, "--json"), 0)
        assert json.loads(still.stdout) == []
        shown = expect(run("checks", "list", "--all", "--data-dir", till), 0).stdout
        assert "BC-1" in shown
        assert "done" in shown

    def test_failed_is_recorded_and_shown(
        self, run: Run, till: Path, open_db: Callable[..., TillDB]
    ) -> None:
        args = ("checks", "done", REGISTER, "start", "--reference", "BC-X", "--failed")
        expect(run(*args, "--data-dir", till), 0)
        shown = expect(run("checks", "list", "--all", "--data-dir", till), 0).stdout
        assert "FAILED" in shown
        assert _alerts(open_db(till, writer=False)) == [("check-failed", "error")]

    def test_a_failed_check_is_checked_again(self, run: Run, till: Path) -> None:
        """After `--failed` the operator checks again: the passing check with its new
        reference is exit 0 and shown done; another reference after that is exit 3."""
        args = ("checks", "done", REGISTER, "start", "--data-dir", till)
        expect(run(*args, "--reference", "BC-X", "--failed"), 0)
        again = expect(run(*args, "--reference", "BC-Y"), 0).stdout
        assert "start check 2026 done, reference 'BC-Y' recorded" in flat(again)
        shown = expect(run("checks", "list", "--all", "--data-dir", till, "--json"), 0).stdout
        assert [(c["reference"], c["failed"]) for c in json.loads(shown)] == [("BC-Y", False)]
        refused = expect(run(*args, "--reference", "BC-Z", "--failed"), 3)
        assert "already-reported" in refused.stderr

    def test_init_says_when_the_startbeleg_check_is_due(self, run: Run, data_dir: Path) -> None:
        """The operator learns of the week at once, not only from the service's log (on a
        unit that is not a development one: AT1, not create-software's default AT100)."""
        unit = ("--id", "dev", "--zda", "AT1")
        expect(run("unit", "create-software", *unit, "--data-dir", data_dir), 0)
        shown = flat(
            expect(run("init", REGISTER, "--unit", "dev", "--data-dir", data_dir), 0).stdout
        )
        [check] = json.loads(
            expect(run("checks", "list", "--data-dir", data_dir, "--json"), 0).stdout
        )
        assert f"by {check['due']}: register the unit and the register in FinanzOnline" in shown
        assert "till-agent checks done KASSE-1 start --reference" in shown

    def test_the_commands_show_checks_without_loading_the_api(self, till: Path) -> None:
        """`checks list` and `checks done` take the view of a check from agent.check_view,
        beside the checks: neither loads the local API's backend (and the receipt service
        behind it). A fresh interpreter, since this test process has loaded them all."""
        code = (
            "import sys\n"
            "from agent.cli import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "print('agent.api_backend' in sys.modules, file=sys.stderr)\n"
        )
        for args in (
            ("list", "--data-dir", till, "--json"),
            ("done", REGISTER, "start", "--reference", "BC-1", "--data-dir", till, "--json"),
        ):
            done = subprocess.run(
                [sys.executable, "-c", code, "checks", *map(str, args)],
                capture_output=True,
                text=True,
                check=True,
            )
            assert json.loads(done.stdout)
            assert done.stderr.strip() == "False"

    def test_a_check_not_owed_is_the_cores_not_found_via_the_service_too(
        self,
        run: Run,
        service: ReceiptService,
        data_dir: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """While the service holds the data directory, `checks done` records over its local
        API: a check the register does not owe is exit 6 in the core's words, as without
        the service."""
        (data_dir / "api-token").write_text("token\n", encoding="utf-8")
        config = tmp_path / "till.toml"
        args = ("checks", "done", REGISTER, "yearly", "--year", "2026", "--reference", "BC-1")
        with serve(create_app(ServiceBackend(service), token="token"), port=0) as server:
            config.write_text(f'data_dir = "{data_dir}"\n[api]\nport = {server.port}\n')
            monkeypatch.setenv("TILL_AGENT_CONFIG", str(config))
            refused = json.loads(expect(run(*args, "--data-dir", data_dir, "--json"), 6).stdout)
        with pytest.raises(NotFound) as core:
            record_check(
                service.db.write_connection(), service.clock, REGISTER, "yearly", 2026, "BC-1"
            )
        assert refused == {"error": "NotFound", "message": str(core.value)}

    def test_an_unknown_register_is_exit_6(self, run: Run, till: Path) -> None:
        expect(run("checks", "list", "--register", "KASSE-9", "--data-dir", till), 6)

    def test_a_reference_the_api_refuses_is_refused_without_the_service_too(
        self, run: Run, till: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """A 10 kB reference is exit 3 (max-length) as the service's API answers it, not
        journaled for good; the check stays open."""
        args = ("checks", "done", REGISTER, "start", "--data-dir", till, "--json")
        refused = json.loads(expect(run(*args, "--reference", "B" * 10_240), 3).stdout)
        assert (refused["field"], refused["rule"]) == ("reference", "max-length")
        assert journal_events(open_db(till, writer=False), "check.done") == []
        listed = expect(run("checks", "list", "--data-dir", till, "--json"), 0)
        assert [c["reference"] for c in json.loads(listed.stdout)] == [None]


def test_the_check_kinds_are_the_ones_the_table_takes(service: ReceiptService) -> None:
    """CHECK_KINDS (from the CheckKind literal) is what the checks table's CHECK allows:
    each kind can be stored, another one cannot."""
    assert CHECK_KINDS == ("start", "yearly", "closing", "unit")
    insert = (
        "INSERT INTO checks (register_id, kind, year, receipt_number, due_date, created_at,"
        " alerts, failed) VALUES (?, ?, 1999, 1, '2000-02-15', '', '[]', 0)"
    )
    with service.db.write_connection().transaction() as conn:
        for kind in CHECK_KINDS:
            conn.execute(insert, (REGISTER, kind))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(insert, (REGISTER, "monthly"))


def test_sales_do_not_touch_the_checks(service: ReceiptService) -> None:
    """Only the Start- and Jahresbeleg owe a check: sales, Nullbelege and Monatsbelege not."""
    service.issue(sale())
    service.issue_special(REGISTER, "null")
    to_closing_day(service, "monthly")
    service.issue_special(REGISTER, "monthly")
    assert [c[0] for c in _checks(service)] == ["start"]

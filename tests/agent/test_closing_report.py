"""The decommissioning report after a Schlussbeleg (rksv.md section 5): reported in
FinanzOnline within one week, an obligation (kind ``closing``) like the Belegchecks,
reminded by the check timer once each and recorded with ``checks done``."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REGISTER

from agent.api_backend import ServiceBackend
from agent.checks import CheckWatch, load_checks, record_check
from agent.clock import FrozenClock
from agent.errors import InvalidSale, WaitsForUnit
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from factories import Run, db_rows, expect, flat, journal_events
from storage import DB_FILE, TillDB, make_engine
from storage.migrate import downgrade_to

UTC = dt.UTC


def _at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _open(db: TillDB, *, done: bool = False) -> list[tuple[str, int, int, str]]:
    """The ``closing`` obligations: (kind, year, receipt number, due date)."""
    with db.read_connection() as conn:
        return [
            (c.kind, c.year, c.receipt_number, c.due_date.isoformat())
            for c in load_checks(conn, done=done)
            if c.kind == "closing"
        ]


def _closing_alerts(db: TillDB) -> list[str]:
    """The reminders journaled of the decommissioning report, oldest first."""
    return [
        str(e["alert"])
        for e in journal_events(db, "alert.raised")
        if str(e["alert"]).startswith("check-") and e["kind"] == "closing"
    ]


@pytest.fixture(name="closed")
def _closed(service: ReceiptService, clock: FrozenClock) -> ReceiptService:
    """KASSE-1 closed by its Schlussbeleg (number 2) on 2 March 2026, 11:00 in Vienna; its
    Startbeleg's check is recorded, so only the decommissioning report is owed."""
    record_check(service.db.write_connection(), clock, REGISTER, "start", None, "BC-1")
    closing = service.issue_special(REGISTER, "closing")
    assert (closing.number, closing.signature_state) == (2, "signed")
    return service


class TestTheObligation:
    def test_a_schlussbeleg_makes_the_report_due_a_week_later(self, closed: ReceiptService) -> None:
        """Due 9 March (7 days after the Schlussbeleg's date), journaled (`check.due`) right
        after the Schlussbeleg's own event, in its transaction."""
        assert _open(closed.db) == [("closing", 2026, 2, "2026-03-09")]
        rows = db_rows(closed.db, "SELECT kind, data FROM journal ORDER BY seq")
        assert rows[-1]["kind"] == "check.due"
        assert json.loads(rows[-1]["data"]) == {
            "check": 2,
            "kind": "closing",
            "year": 2026,
            "number": 2,
            "due": "2026-03-09",
        }
        assert (rows[-2]["kind"], json.loads(rows[-2]["data"])["number"]) == ("receipt.issued", 2)

    def test_the_due_date_counts_from_the_schlussbelegs_date_in_vienna(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """22:30 UTC on 31 March is already 1 April in Vienna (CEST): due 8 April."""
        clock.set(_at(2026, 3, 31, 22, 30))
        service.issue_special(REGISTER, "closing")  # after March's Monatsbeleg (2)
        assert _open(service.db) == [("closing", 2026, 3, "2026-04-08")]

    def test_it_is_in_the_status_as_an_open_check(self, closed: ReceiptService) -> None:
        """Support sees it where it sees the Belegchecks: `open_checks` of `/v1/status`."""
        [register] = ServiceBackend(closed).status().model_dump(mode="json")["registers"]
        assert [(c["kind"], c["due"], c["overdue"]) for c in register["open_checks"]] == [
            ("closing", "2026-03-09", False)
        ]


class TestReminders:
    def test_each_reminder_fires_once_naming_the_schlussbeleg(
        self, closed: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`created` (INFO), `approaching` from 7 March 00:00 in Vienna (WARNING), `overdue`
        from 10 March 00:00 (ERROR), each once; the lines say what to report and how to
        record it."""
        caplog.set_level(logging.INFO, logger="agent.checks")
        checks = CheckWatch(closed.db, clock)
        for moment, raised in [
            (_at(2026, 3, 2, 10, 1), ["created"]),
            (_at(2026, 3, 6, 22, 59), []),
            (_at(2026, 3, 6, 23, 0), ["approaching"]),
            (_at(2026, 3, 9, 22, 59), []),
            (_at(2026, 3, 9, 23, 0), ["overdue"]),
            (_at(2026, 4, 1), []),
        ]:
            clock.set(moment)
            assert [level for _, level in checks.tick()] == raised, moment
            assert checks.tick() == []
        assert _closing_alerts(closed.db) == ["check-created", "check-approaching", "check-overdue"]
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in lines] == [logging.INFO, logging.WARNING, logging.ERROR]
        what = "report the decommissioning (Außerbetriebnahme) of the register in FinanzOnline"
        assert all(f"{what}, after its Schlussbeleg (number 2)" in text for _, text in lines)
        assert "no report is recorded: overdue" in lines[2][1]
        assert "till-agent checks done KASSE-1 closing --year 2026 --reference" in lines[2][1]

    def test_the_recorded_report_stops_the_reminders(
        self, closed: ReceiptService, clock: FrozenClock
    ) -> None:
        """Recorded once (the year may be left out: a register has one Schlussbeleg), then
        the timer reminds of nothing; a FinanzOnline report does not "fail"."""
        writer = closed.db.write_connection()
        with pytest.raises(InvalidSale) as refused:
            record_check(writer, clock, REGISTER, "closing", None, "FON-1", failed=True)
        assert (refused.value.field, refused.value.rule) == ("failed", "allowed-values")
        done = record_check(writer, clock, REGISTER, "closing", None, "FON-1")
        assert (done.kind, done.reference, done.failed) == ("closing", "FON-1", False)
        with pytest.raises(InvalidSale, match="closing report") as again:
            record_check(writer, clock, REGISTER, "closing", None, "FON-2")
        assert again.value.rule == "already-reported"
        clock.set(_at(2026, 4, 1))
        assert CheckWatch(closed.db, clock).tick() == []
        assert _open(closed.db) == []
        assert _open(closed.db, done=True) == [("closing", 2026, 2, "2026-03-09")]
        assert [e["kind"] for e in journal_events(closed.db, "check.done")] == ["start", "closing"]


class TestAdoption:
    @pytest.fixture(name="upgraded")
    def _upgraded(
        self, closed: ReceiptService, open_db: Callable[..., TillDB], data_dir: Path
    ) -> Callable[[], TillDB]:
        """The closed till brought back to the schema before this obligation (0006), which
        has none, and opened again (migrated)."""

        def upgraded() -> TillDB:
            closed.db.close()
            engine = make_engine(data_dir / DB_FILE)
            downgrade_to(engine, "0006")
            engine.dispose()
            return open_db(data_dir)

        return upgraded

    def test_a_register_closed_before_the_upgrade_gets_its_report(
        self, upgraded: Callable[[], TillDB], clock: FrozenClock
    ) -> None:
        """Closed three days before the upgrade (and it has another obligation, its
        Startbeleg's check): the first tick adopts the report, due 9 March, once."""
        db = upgraded()
        assert _open(db, done=True) == []
        clock.set(_at(2026, 3, 5, 9, 0))
        checks = CheckWatch(db, clock)
        assert [level for _, level in checks.tick()] == ["created"]
        assert checks.tick() == []
        assert CheckWatch(db, clock).tick() == []  # a restart adopts nothing again
        assert _open(db) == [("closing", 2026, 2, "2026-03-09")]

    def test_a_register_closed_long_before_is_not_reminded(
        self, upgraded: Callable[[], TillDB], clock: FrozenClock
    ) -> None:
        """Closed more than a week before the upgrade: no obligation, no ERROR about a
        decommissioning the agent never tracked."""
        db = upgraded()
        clock.set(_at(2026, 3, 10, 9, 0))
        assert CheckWatch(db, clock).tick() == []
        assert _open(db, done=True) == []


def test_a_schlussbeleg_recovered_late_is_reminded_at_the_next_tick(
    chain_service: ReceiptService, chain: ChainServiceFake, clock: FrozenClock
) -> None:
    """Its answer was lost and the chain service came back ten days later: recovery stores
    the Schlussbeleg as the service signed it (dated 2 March), and the next tick creates its
    obligation, overdue already, with every reminder it missed."""
    chain.mode = "lose_response"
    with pytest.raises(WaitsForUnit, match="Schlussbeleg"):
        chain_service.issue_special(REGISTER, "closing")
    clock.advance(10 * 86400)
    chain.mode = "up"
    [closing] = chain_service.recover(REGISTER) or []
    assert (closing.number, closing.kind, closing.signature_state) == (2, "closing", "signed")
    checks = CheckWatch(chain_service.db, clock)
    raised = [level for _, level in checks.tick()]
    assert _open(chain_service.db) == [("closing", 2026, 2, "2026-03-09")]
    assert _closing_alerts(chain_service.db) == [
        "check-created",
        "check-approaching",
        "check-overdue",
    ]
    assert raised.count("overdue") == 2  # the Startbeleg's check is overdue as well
    assert checks.tick() == []


class TestCommandLine:
    def test_list_and_done(self, run: Run, till: Path) -> None:
        """`special closing --yes`, then `checks list` shows the report due; `checks done
        KASSE-1 closing` records it (exit 0), `--failed` is exit 3; `--all` shows it done."""
        expect(run("special", REGISTER, "closing", "--yes", "--data-dir", till), 0)
        listed = expect(run("checks", "list", "--data-dir", till, "--json"), 0).stdout
        [closing] = [c for c in json.loads(listed) if c["kind"] == "closing"]
        assert (closing["register"], closing["number"], closing["reference"]) == (REGISTER, 3, None)
        args = ("checks", "done", REGISTER, "closing", "--data-dir", till)
        refused = expect(run(*args, "--reference", "FON-1", "--failed", "--json"), 3)
        assert json.loads(refused.stdout)["rule"] == "allowed-values"
        done = flat(expect(run(*args, "--reference", "FON-1"), 0).stdout)
        assert f"{REGISTER}: closing report {closing['year']} done, reference 'FON-1'" in done
        shown = json.loads(
            expect(run("checks", "list", "--all", "--data-dir", till, "--json"), 0).stdout
        )
        assert [(c["kind"], c["reference"]) for c in shown if c["kind"] == "closing"] == [
            ("closing", "FON-1")
        ]

"""A register on the development unit owes no FinanzOnline step: its Start-, Jahres- and
Schlussbeleg imply no check or report (the unit is self-signed, of the fictitious provider
AT100), and one INFO line says so; a register on a production unit is reminded as before."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REGISTER, UNIT

from agent.api_backend import ServiceBackend
from agent.checks import CheckWatch, load_checks, record_due
from agent.clock import FrozenClock
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.config import DEV_UNIT, DEV_ZDA
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, db_rows, expect, flat, journal_events
from storage import DB_FILE, TillDB, make_engine
from storage.migrate import downgrade_to

DEV_REGISTER = "DEV-1"


def _at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def _owed(db: TillDB) -> list[tuple[str, str]]:
    """The obligations listed (as `checks list` and `/v1/status` have them): (register, kind)."""
    with db.read_connection() as conn:
        return [(c.register_id, c.kind) for c in load_checks(conn, done=True)]


@pytest.fixture(name="both")
def _both(
    service: ReceiptService,
    registry: UnitRegistry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> ReceiptService:
    """KASSE-1 on the production unit (AT1, the conftest's), DEV-1 on the development unit
    as `run` creates it (id dev-uncertified, AT100), both initialized on 2 March 2026."""
    key_file, cert_file = create_software_unit(tmp_path / "dev-keys", name=DEV_UNIT)
    config = UnitConfig(
        id=DEV_UNIT, kind="software", zda=DEV_ZDA, key_file=key_file, certificate_file=cert_file
    )
    add_unit(service.db, registry, config)
    caplog.set_level(logging.INFO, logger="agent.checks")
    service.init_register(RegisterSetup(DEV_REGISTER, [DEV_UNIT]))
    return service


def _development_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The lines saying a register is a development one, of the fixture and the test."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    return [
        (r.levelno, r.getMessage())
        for r in records
        if r.name == "agent.checks" and "development register" in r.getMessage()
    ]


class TestTheStartbeleg:
    def test_the_development_register_owes_nothing_and_is_told_so_once(
        self, both: ReceiptService, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No obligation and no `check.due` for DEV-1; one INFO line names it a development
        register that needs no FinanzOnline step. KASSE-1's start check is there as ever."""
        assert _owed(both.db) == [(REGISTER, "start")]
        assert [e["number"] for e in journal_events(both.db, "check.due")] == [1]
        [(level, line)] = _development_lines(caplog)
        assert level == logging.INFO
        assert line.startswith(f"register {DEV_REGISTER}: its Startbeleg (number 1) is signed")
        assert f"the development unit {DEV_UNIT}" in line
        assert "needs no FinanzOnline step" in line

    def test_no_reminder_at_six_and_eight_days(
        self, both: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The timer reminds of KASSE-1 only (created, approaching, overdue); DEV-1 gets no
        WARNING, no ERROR, and is not in `open_checks` of the status."""
        caplog.set_level(logging.INFO, logger="agent.checks")
        watch = CheckWatch(both.db, clock)
        raised: list[str] = []
        for moment in (_at(2026, 3, 2, 10, 1), _at(2026, 3, 8, 10), _at(2026, 3, 10, 10)):
            clock.set(moment)
            raised += [level for _, level in watch.tick()]
        assert raised == ["created", "approaching", "overdue"]
        reminded = [m for r in caplog.records if "FinanzOnline and" in (m := r.getMessage())]
        assert len(reminded) == 3
        assert all(line.startswith(f"register {REGISTER}:") for line in reminded)
        status = ServiceBackend(both).status().model_dump(mode="json")["registers"]
        assert {r["register"]: [c["kind"] for c in r["open_checks"]] for r in status} == {
            REGISTER: ["start"],
            DEV_REGISTER: [],
        }


class TestTheSchlussbeleg:
    def test_closing_the_development_register_owes_no_report(
        self, both: ReceiptService, clock: FrozenClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The README's way from development to production: DEV-1's Schlussbeleg records no
        decommissioning report (nor does the timer adopt one), and says why at INFO;
        KASSE-1's Schlussbeleg owes its report as before."""
        assert both.issue_special(DEV_REGISTER, "closing").signature_state == "signed"
        assert both.issue_special(REGISTER, "closing").signature_state == "signed"
        clock.set(_at(2026, 3, 2, 10, 5))
        CheckWatch(both.db, clock).tick()
        assert _owed(both.db) == [(REGISTER, "start"), (REGISTER, "closing")]
        assert (
            db_rows(both.db, "SELECT count(*) FROM checks WHERE register_id = ?", DEV_REGISTER)[0][
                0
            ]
            == 0
        )
        lines = [line for _, line in _development_lines(caplog)]
        assert len(lines) == 2
        assert lines[1].startswith(f"register {DEV_REGISTER}: its Schlussbeleg (number 2)")


class TestTillsFromBefore:
    def test_an_obligation_recorded_before_is_not_listed_nor_reminded(
        self, both: ReceiptService, clock: FrozenClock
    ) -> None:
        """A till whose earlier version recorded DEV-1's start check (as the first `run`
        did): it is not in the list nor reminded of, eight days later either."""
        with both.db.write_connection().transaction() as conn:
            record_due(conn, DEV_REGISTER, "start", 1, "2026-03-02T11:00:00", None, clock.now())
        assert db_rows(both.db, "SELECT count(*) FROM checks")[0][0] == 2
        assert _owed(both.db) == [(REGISTER, "start")]
        clock.set(_at(2026, 3, 10, 10))
        watch = CheckWatch(both.db, clock)
        assert {check for check, _ in watch.tick()} == {1}  # KASSE-1's only

    def test_an_upgraded_development_register_is_not_adopted(
        self,
        both: ReceiptService,
        clock: FrozenClock,
        open_db: Callable[..., TillDB],
        data_dir: Path,
    ) -> None:
        """Brought back to the schema before checks and upgraded: the first tick adopts
        KASSE-1's start check only."""
        both.db.close()
        engine = make_engine(data_dir / DB_FILE)
        downgrade_to(engine, "0003")
        engine.dispose()
        db = open_db(data_dir)
        clock.set(_at(2026, 3, 4, 9))
        assert [level for _, level in CheckWatch(db, clock).tick()] == ["created"]
        assert _owed(db) == [(REGISTER, "start")]


def test_a_self_signed_unit_under_another_id_is_reminded_as_before(service: ReceiptService) -> None:
    """The conftest's unit is self-signed too, but signs as AT1, not the fictitious AT100:
    its register owes its start check (what tests and scenario replays rely on)."""
    assert UNIT != DEV_UNIT
    assert _owed(service.db) == [(REGISTER, "start")]


class TestCommandLine:
    def test_init_and_closing_on_the_development_unit_say_nothing_is_owed(
        self, run: Run, data_dir: Path
    ) -> None:
        """`init` on a development unit (`unit create-software`'s default AT100; the id
        dev-uncertified is `run`'s alone) names no due date and no FinanzOnline registration,
        nor does its `special ... closing`; `checks list` is empty. A register on a
        closed-system unit is told its week as before."""
        expect(run("unit", "create-software", "--id", "devbox", "--data-dir", data_dir), 0)
        closed = ("--id", UNIT, "--key-id", "U:ATU12345678-K1")
        expect(run("unit", "create-software", *closed, "--data-dir", data_dir), 0)
        steps = [
            ("init", DEV_REGISTER, "--unit", "devbox"),
            ("special", DEV_REGISTER, "closing", "--yes"),
            ("init", REGISTER, "--unit", UNIT),
        ]
        said = [flat(expect(run(*s, "--data-dir", data_dir), 0).stdout) for s in steps]
        development = f"register {DEV_REGISTER} signs with a development unit (AT100): a"
        for text in said[:2]:
            assert development in text
            assert "needs no FinanzOnline step" in text
            assert " by 20" not in text
            assert "checks done" not in text
        assert development not in said[2]
        assert "register the unit and the register in FinanzOnline" in said[2]
        listed = expect(run("checks", "list", "--all", "--data-dir", data_dir, "--json"), 0)
        assert [(c["register"], c["kind"]) for c in json.loads(listed.stdout)] == [
            (REGISTER, "start")
        ]

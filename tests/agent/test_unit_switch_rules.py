"""What ``unit switch`` owes and refuses beyond the switch itself (agent/unit_switch.py):
a registered register never goes on with a development unit nor a development register with a
certified one, a switch back to the registered unit owes nothing, a chain signing a process
left unfinished is stored before the switch, ``checks done REGISTER unit`` records one
check per reference when several switches owe theirs, and the help and the metrics name the
unit check."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import Result

from agent import metrics
from agent.api_backend import ServiceBackend
from agent.checks import CheckWatch
from agent.clock import FrozenClock, SystemClock
from agent.errors import FiscalError
from agent.issuing import Issuing
from agent.metrics import Exposition
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from agent.unit_switch import switch_unit
from factories import Run, add_unit, expect, flat, sale
from storage import DB_FILE, TillDB, make_engine
from storage.db import open_till_db
from storage.journal import append_event
from storage.migrate import downgrade_to, upgrade_to_head

REGISTER = "K3"

Till = Callable[..., Result]


@pytest.fixture(name="till")
def _till(run: Run, data_dir: Path) -> Till:
    """The command line on the test's data directory: ``till(*args, code=0)``."""

    def till(*args: str | Path, code: int = 0, input: str | None = None) -> Result:
        return expect(run(*args, "--data-dir", data_dir, input=input), code)

    return till


def _units(till: Till, **zdas: str) -> None:
    """Software units by id and provider (AT100: a development unit)."""
    for unit, zda in zdas.items():
        till("unit", "create-software", "--id", unit, "--zda", zda)


def _sell(till: Till, request_id: str, register: str = REGISTER) -> dict[str, Any]:
    raw = json.dumps(sale(request_id=request_id, register=register))
    return dict(json.loads(till("issue", "-", "--json", input=raw).stdout))


def _switch(till: Till, unit: str, code: int = 0, register: str = REGISTER) -> dict[str, Any]:
    return dict(json.loads(till("unit", "switch", register, unit, "--json", code=code).stdout))


def _rows(data_dir: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _switches(data_dir: Path) -> list[tuple[Any, ...]]:
    return _rows(data_dir, "SELECT data FROM journal WHERE kind = 'register.unit_switched'")


class TestADevelopmentUnit:
    def test_a_registered_register_is_refused_a_development_unit(
        self, till: Till, data_dir: Path
    ) -> None:
        """K3 signs with the certified c1: a switch to the AT100 unit dv is exit 3 (rule
        registered-to-development) saying its receipts would carry the fictitious test
        provider; nothing changes and the next sale is c1's. It was exit 0 "a development
        register needs no FinanzOnline step", and receipt 2 was signed _R1-AT100_."""
        _units(till, c1="AT1", dv="AT100")
        till("init", REGISTER, "--unit", "c1")
        refused = _switch(till, "dv", code=3)
        assert (refused["field"], refused["rule"]) == ("unit", "registered-to-development")
        assert "certified unit c1 (R1-AT1)" in refused["message"]
        assert "fictitious test provider AT100" in refused["message"]
        assert _rows(data_dir, "SELECT active_unit FROM registers") == [("c1",)]
        assert _switches(data_dir) == []
        assert _sell(till, "a")["qr"].startswith(f"_R1-AT1_{REGISTER}_2_")

    def test_a_register_that_signed_with_a_certified_unit_owes_its_failure_report(
        self, till: Till, data_dir: Path
    ) -> None:
        """An earlier version switched the certified K3 to dv (played here in SQL): another
        development unit is refused as well, and the switch on to the certified c2 owes
        the report of c1's failure, the unit whose receipts FinanzOnline knows (it said
        "and the register: it signed with a development unit so far", and no report)."""
        _units(till, c1="AT1", c2="AT1", dv="AT100", dv2="AT100")
        till("init", REGISTER, "--unit", "c1")
        conn = sqlite3.connect(data_dir / "till.sqlite3")
        with conn:
            conn.execute("INSERT INTO register_units VALUES (?, 1, 'dv')", (REGISTER,))
            conn.execute("UPDATE registers SET active_unit = 'dv'")
        conn.close()
        _sell(till, "a")
        refused = _switch(till, "dv2", code=3)
        assert refused["rule"] == "registered-to-development"
        assert "signed with the certified unit c1" in refused["message"]
        said = flat(till("unit", "switch", REGISTER, "c2").stdout)
        assert "report the failure of unit c1 and register unit c2 in FinanzOnline" in said
        assert "and the register" not in said

    def test_a_development_register_is_refused_a_certified_unit(
        self, till: Till, data_dir: Path
    ) -> None:
        """A test till on dv (its Startbeleg signed _R1-AT100_) is refused the certified
        c2: exit 3, rule development-to-registered, saying to set up a new register on c2;
        nothing changes, no check is owed, the next sale is dv's. It was exit 0 "register
        unit c2 and register K3": a DEP starting with a Startbeleg no Belegcheck accepts,
        with no start check owed. Another development unit is still allowed."""
        _units(till, dv="AT100", dv2="AT100", c2="AT1")
        till("init", REGISTER, "--unit", "dv")
        _sell(till, "a")
        refused = _switch(till, "c2", code=3)
        assert (refused["field"], refused["rule"]) == ("unit", "development-to-registered")
        message = flat(refused["message"])
        assert "goes live with its own Startbeleg signed by the registered unit" in message
        assert "till-agent init NEW-ID --unit c2" in message
        assert _rows(data_dir, "SELECT active_unit FROM registers") == [("dv",)]
        assert _switches(data_dir) == []
        assert _rows(data_dir, "SELECT kind FROM checks") == []
        assert _sell(till, "b")["qr"].startswith(f"_R1-AT100_{REGISTER}_3_")
        moved = _switch(till, "dv2")
        assert (moved["switched"], moved["owed"], moved["replaced"]) == (True, "development", None)


class TestSwitchBack:
    """c1 signed receipts 1 and 2, the register was switched to c2 by mistake and back to
    c1 before any receipt of c2."""

    def test_back_owes_nothing_and_withdraws_the_open_check(
        self, till: Till, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Nothing is owed: no unit check (it said "report the failure of unit c1 and
        register unit c1" and kept the check of receipt 3 open); the mistaken switch's open
        check is withdrawn (journaled, check.due stays), no reminder is raised."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _sell(till, "a")
        till("unit", "switch", REGISTER, "c2")
        said = flat(till("unit", "switch", REGISTER, "c1").stdout)
        assert f"register {REGISTER} is back on its registered unit c1" in said
        assert "nothing is owed in FinanzOnline" in said
        assert "the open unit check of the switch to c2 (receipt 3) is withdrawn" in said
        assert "report the failure" not in said
        assert _rows(data_dir, "SELECT kind FROM checks") == [("start",)]
        [(withdrawn,)] = _rows(data_dir, "SELECT data FROM journal WHERE kind = 'check.withdrawn'")
        facts = json.loads(withdrawn)
        assert (facts["kind"], facts["number"]) == ("unit", 3)
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.due'")) == 2
        caplog.set_level(logging.INFO, logger="agent.checks")
        db = open_till_db(data_dir)
        try:
            CheckWatch(db, SystemClock()).tick()
        finally:
            db.close()
        assert not [r for r in caplog.records if "unit switch" in r.getMessage()]
        assert _sell(till, "b")["qr"].startswith(f"_R1-AT1_{REGISTER}_3_")

    def test_back_and_away_again_owes_a_new_check(self, till: Till, data_dir: Path) -> None:
        """Back on c1, then to c2 again: the unit check of receipt 3 is owed anew, and
        the JSON names the replaced unit and what the switch back withdrew."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        first = _switch(till, "c2")
        assert (first["owed"], first["replaced"], first["withdrawn"]) == ("unit", "c1", None)
        back = _switch(till, "c1")
        assert (back["owed"], back["replaced"], back["due"]) == ("back", None, None)
        assert back["withdrawn"] is not None
        again = _switch(till, "c2")
        assert (again["owed"], again["replaced"]) == ("unit", "c1")
        assert again["due"] is not None
        assert _rows(data_dir, "SELECT kind, receipt_number FROM checks ORDER BY id") == [
            ("start", 1),
            ("unit", 2),
        ]

    def test_a_receipt_of_the_new_unit_makes_it_a_switch(self, till: Till) -> None:
        """Once c2 signed receipt 3, going back to c1 is a switch like any: c2's failure
        is reported and c1 registered again (unit check of receipt 4)."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _switch(till, "c2")
        _sell(till, "a")
        back = _switch(till, "c1")
        assert (back["owed"], back["replaced"], back["from_number"]) == ("unit", "c2", 3)


class TestBackAfterTheCheckWasRecorded:
    """c1 signed receipts 1 and 2, the register was switched to c2 and its unit check
    (receipt 3) recorded (FinanzOnline knows c2, c1 reported failed), then switched back to
    c1 before any receipt of c2."""

    @pytest.fixture(autouse=True)
    def _recorded(self, till: Till) -> None:
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _sell(till, "a")
        _switch(till, "c2")
        till("checks", "done", REGISTER, "unit", "--reference", "FON-C2")

    def _unit_checks(self, till: Till) -> list[tuple[int, str | None]]:
        listed = json.loads(till("checks", "list", "--all", "--json").stdout)
        return [(c["number"], c["reference"]) for c in listed if c["kind"] == "unit"]

    def test_back_owes_registering_the_unit_again(self, till: Till, data_dir: Path) -> None:
        """The switch back owes its own unit check of receipt 3: register c1 again and
        report c2's failure; the recorded check stays. It said the same words, but the new
        check collided with the recorded one (one unit check per receipt number) and was
        dropped: nothing was open, and checks done --receipt 3 was refused."""
        back = _switch(till, "c1")
        assert (back["owed"], back["replaced"], back["again"]) == ("unit", "c2", True)
        assert (back["from_number"], back["withdrawn"]) == (3, None)
        assert back["due"] is not None
        assert self._unit_checks(till) == [(3, "FON-C2"), (3, None)]
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.due'")) == 3
        open_checks = json.loads(till("checks", "list", "--json").stdout)
        assert [(c["kind"], c["number"]) for c in open_checks] == [("start", 1), ("unit", 3)]

    def test_the_words_say_again(self, till: Till) -> None:
        said = flat(till("unit", "switch", REGISTER, "c1").stdout)
        assert "report the failure of unit c2 and register unit c1 in FinanzOnline again" in said
        assert f"till-agent checks done {REGISTER} unit --receipt 3" in said

    def test_checks_done_records_each_once(self, till: Till, data_dir: Path) -> None:
        """The recorded reference again finds its check (no change); a new one records the
        open check of the switch back, and again changes nothing."""
        _switch(till, "c1")
        old = ("checks", "done", REGISTER, "unit", "--reference", "FON-C2", "--json")
        assert json.loads(till(*old).stdout)["reference"] == "FON-C2"
        assert self._unit_checks(till) == [(3, "FON-C2"), (3, None)]
        new = ("checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "FON-C1")
        till(*new)
        till(*new)
        assert self._unit_checks(till) == [(3, "FON-C2"), (3, "FON-C1")]
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.done'")) == 2
        registered = "SELECT reference, registered_unit FROM checks WHERE kind = 'unit' ORDER BY id"
        assert _rows(data_dir, registered) == [("FON-C2", "c2"), ("FON-C1", "c1")]

    def test_the_reminder_names_the_unit_registered_since(
        self, till: Till, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The check timer tells to report c2's failure (FinanzOnline knows c2), not c1's."""
        _switch(till, "c1")
        caplog.set_level(logging.INFO, logger="agent.checks")
        db = open_till_db(data_dir)
        try:
            CheckWatch(db, SystemClock()).tick()
        finally:
            db.close()
        [said] = [r.getMessage() for r in caplog.records if "unit switch" in r.getMessage()]
        assert "report there the failure of unit c2" in said
        assert "--receipt 3" in said

    def test_and_forth_again_is_back_on_the_registered_unit(
        self, till: Till, data_dir: Path
    ) -> None:
        """To c2 again before any receipt: c2 is the unit FinanzOnline knows, so nothing is
        owed and the open check of the switch back is withdrawn; the recorded one stays."""
        back = _switch(till, "c1")
        forth = _switch(till, "c2")
        assert (forth["owed"], forth["replaced"], forth["due"]) == ("back", None, None)
        assert forth["withdrawn"] is not None
        assert self._unit_checks(till) == [(3, "FON-C2")]
        assert back["again"] is True
        assert _sell(till, "b")["qr"].startswith(f"_R1-AT2_{REGISTER}_3_")

    def test_another_unit_reports_the_failure_of_the_registered_one(self, till: Till) -> None:
        """To a third unit c3 instead: register c3, report the failure of c2."""
        _units(till, c3="AT1")
        moved = _switch(till, "c3")
        assert (moved["owed"], moved["replaced"], moved["again"]) == ("unit", "c2", False)
        assert self._unit_checks(till) == [(3, "FON-C2"), (3, None)]


class TestAFailedCheckBeforeTheSwitchBack:
    """c1 signed receipts 1 and 2, the register was switched to c2, its unit check
    (receipt 3) recorded as FAILED, then switched back to c1, which owes its own unit check
    of receipt 3."""

    @pytest.fixture(autouse=True)
    def _failed(self, till: Till) -> None:
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        till("checks", "done", REGISTER, "start", "--reference", "BC-S")
        _sell(till, "a")
        _switch(till, "c2")
        till("checks", "done", REGISTER, "unit", "--reference", "BC-F", "--failed")
        _switch(till, "c1")

    def _listed(self, till: Till, *flags: str) -> list[tuple[int, str | None, bool]]:
        listed = json.loads(till("checks", "list", *flags, "--json").stdout)
        return [(c["number"], c["reference"], c["failed"]) for c in listed if c["kind"] == "unit"]

    def test_a_passing_check_of_the_number_settles_it(self, till: Till, data_dir: Path) -> None:
        """The open check of the switch back passes: the failed one is settled (checks
        list, the status, the metrics no longer count the register as "unit failed"),
        the journal's check.done names it, and each check again is a harmless repeat. The
        failed one stayed listed for good, and no check could clear it (already-reported)."""
        assert self._listed(till) == [(3, "BC-F", True), (3, None, False)]
        till("checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "BC-OK")
        assert self._listed(till) == []
        assert self._listed(till, "--all") == [(3, "BC-F", False), (3, "BC-OK", False)]
        [(done,)] = _rows(
            data_dir,
            "SELECT data FROM journal WHERE kind = 'check.done' ORDER BY seq DESC LIMIT 1",
        )
        [failed_id] = [r[0] for r in _rows(data_dir, "SELECT id FROM checks WHERE failed")]
        assert json.loads(done)["settles"] == [failed_id]
        db = open_till_db(data_dir)
        try:
            status = ServiceBackend(ReceiptService(db, UnitRegistry())).status()
        finally:
            db.close()
        assert [c.reference for r in status.registers for c in r.open_checks] == []
        journaled = len(_rows(data_dir, "SELECT 1 FROM journal"))
        till("checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "BC-OK")
        till("checks", "done", REGISTER, "unit", "--reference", "BC-F", "--failed")
        assert len(_rows(data_dir, "SELECT 1 FROM journal")) == journaled
        again = ("checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "BC-OK2")
        assert "already-reported" in flat(till(*again, code=3).stdout + till(*again, code=3).stderr)

    def test_a_failing_one_does_not(self, till: Till) -> None:
        """Failed too: both count; the check made again over the later one settles both."""
        till(
            "checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "BC-F2", "--failed"
        )
        assert self._listed(till) == [(3, "BC-F", True), (3, "BC-F2", True)]
        till("checks", "done", REGISTER, "unit", "--receipt", "3", "--reference", "BC-OK")
        assert self._listed(till, "--all") == [(3, "BC-F", False), (3, "BC-OK", False)]


class TestTheMigration:
    """0012: one open unit check per receipt number, and the unit a recorded one
    registered."""

    def _engine_to(self, data_dir: Path, revision: str) -> None:
        engine = make_engine(data_dir / DB_FILE)
        try:
            (downgrade_to if revision != "head" else upgrade_to_head)(engine, revision)
        finally:
            engine.dispose()

    def test_recorded_checks_get_the_unit_they_registered(self, till: Till, data_dir: Path) -> None:
        """A till of 0011 with two recorded unit checks: that of receipt 3, which c2 signed,
        registered c2; that of receipt 4, which no receipt has yet, the active unit c3."""
        _units(till, c1="AT1", c2="AT1", c3="AT1")
        till("init", REGISTER, "--unit", "c1")
        _sell(till, "a")
        for unit, request_id in (("c2", "b"), ("c3", None)):
            _switch(till, unit)
            till("checks", "done", REGISTER, "unit", "--reference", f"FON-{unit}")
            if request_id is not None:
                _sell(till, request_id)
        self._engine_to(data_dir, "0011")
        columns = [row[1] for row in _rows(data_dir, "PRAGMA table_info(checks)")]
        assert "registered_unit" not in columns
        self._engine_to(data_dir, "head")
        registered = "SELECT receipt_number, registered_unit FROM checks WHERE kind = 'unit'"
        assert _rows(data_dir, registered) == [(3, "c2"), (4, "c3")]
        back = _switch(till, "c2")
        assert (back["owed"], back["replaced"], back["again"]) == ("unit", "c3", True)

    def _switch_of_0011(self, data_dir: Path, old: str, new: str, number: int) -> str:
        """What ``unit switch`` of a till of 0011 did after a recorded unit check of
        ``number`` (38014d5^): the active unit and the journal event, and no check (the
        one it owed collided with the recorded one: ON CONFLICT DO NOTHING). Its time."""
        at = dt.datetime.now(dt.UTC).isoformat()
        data = {"added": False, "from_number": number, "new_unit": new, "old_unit": old}
        conn = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE registers SET active_unit = ? WHERE id = ?", (new, REGISTER))
            append_event(
                conn,
                kind="register.unit_switched",
                register_id=REGISTER,
                data={**data, "waiting": False},
                at=at,
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return at

    def _dropped(self, till: Till, data_dir: Path) -> str:
        """A till of 0011: c1 signed the Startbeleg, the register switched to c2, its unit
        check (receipt 2) was recorded, then it switched back to c1, whose check was
        dropped. The time of that switch back."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _switch(till, "c2")
        till("checks", "done", REGISTER, "unit", "--reference", "FON-C2")
        self._engine_to(data_dir, "0011")
        return self._switch_of_0011(data_dir, "c2", "c1", 2)

    def _registered(self, data_dir: Path) -> list[tuple[Any, ...]]:
        return _rows(
            data_dir,
            "SELECT receipt_number, reference, registered_unit FROM checks WHERE kind = 'unit'"
            " ORDER BY id",
        )

    def test_the_unit_of_a_check_is_the_one_switched_to(self, till: Till, data_dir: Path) -> None:
        """The recorded check registered c2, the unit the journal's switch before it names,
        though c1 is active: a switch to c2 is back on the registered unit and owes
        nothing. It got c1 (the active unit): that switch owed a check of receipt 2."""
        self._dropped(till, data_dir)
        self._engine_to(data_dir, "head")
        assert self._registered(data_dir) == [(2, "FON-C2", "c2")]
        forth = _switch(till, "c2")
        assert (forth["owed"], forth["replaced"], forth["due"]) == ("back", None, None)
        db = open_till_db(data_dir)
        try:
            CheckWatch(db, SystemClock()).tick()  # c2 is registered: nothing to adopt
        finally:
            db.close()
        assert self._registered(data_dir) == [(2, "FON-C2", "c2")]

    def test_the_dropped_check_is_owed_again(
        self, till: Till, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """c1 then signed receipt 2. The first tick after the upgrade creates the check the
        switch back owed (check.due), due a week after that switch, and reminds to report
        c2's failure; the recorded check keeps c2 (receipt 2's unit is c1). A switch of c1
        on to c3 now owes the check of receipt 3."""
        switched = self._dropped(till, data_dir)
        self._engine_to(data_dir, "head")
        _sell(till, "a")
        self._engine_to(data_dir, "0011")
        self._engine_to(data_dir, "head")
        assert self._registered(data_dir) == [(2, "FON-C2", "c2")]
        caplog.set_level(logging.INFO, logger="agent.checks")
        db = open_till_db(data_dir)
        try:
            watch = CheckWatch(db, SystemClock())
            watch.tick()
            watch.tick()  # the first tick only
        finally:
            db.close()
        assert self._registered(data_dir) == [(2, "FON-C2", "c2"), (2, None, None)]
        due = dt.datetime.fromisoformat(switched).astimezone(ZoneInfo("Europe/Vienna")).date()
        open_checks = json.loads(till("checks", "list", "--json").stdout)
        assert [(c["kind"], c["number"], c["due"]) for c in open_checks][1:] == [
            ("unit", 2, (due + dt.timedelta(days=7)).isoformat())
        ]
        dues = _rows(data_dir, "SELECT data FROM journal WHERE kind = 'check.due'")
        assert json.loads(dues[-1][0])["number"] == 2
        [said] = [r.getMessage() for r in caplog.records if "unit switch" in r.getMessage()]
        assert "report there the failure of unit c2" in said
        till("checks", "done", REGISTER, "unit", "--receipt", "2", "--reference", "FON-C1")
        assert self._registered(data_dir)[-1] == (2, "FON-C1", "c1")

    def test_a_downgrade_keeps_the_latest_check_of_a_number(
        self, till: Till, data_dir: Path
    ) -> None:
        """0011 holds one unit check per receipt number: the open one of the switch back
        stays, the recorded one goes (its check.done stays in the journal)."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _switch(till, "c2")
        till("checks", "done", REGISTER, "unit", "--reference", "FON-C2")
        _switch(till, "c1")
        self._engine_to(data_dir, "0011")
        unit_checks = "SELECT receipt_number, reference FROM checks WHERE kind = 'unit'"
        assert _rows(data_dir, unit_checks) == [(2, None)]
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.done'")) == 1


class TestSwitchJson:
    def test_json_says_what_is_owed(self, till: Till) -> None:
        """unit switch --json names the unit whose failure is reported (replaced) and the
        case (owed); it had neither."""
        _units(till, c1="AT1", c2="AT2")
        till("init", REGISTER, "--unit", "c1")
        _sell(till, "a")
        done = _switch(till, "c2")
        assert (done["owed"], done["replaced"], done["withdrawn"]) == ("unit", "c1", None)
        same = _switch(till, "c2")
        assert (same["switched"], same["owed"], same["replaced"]) == (False, "unchanged", None)


class _Died(BaseException):
    """The process ends here (nothing after it runs, the transaction rolls back)."""


def _die_while_storing(chain_service: ReceiptService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sale the chain service signed whose process ended before its COMMIT: the intent
    of receipt 2 is committed, the receipt is not."""

    def died(*_: object) -> None:
        raise _Died

    with monkeypatch.context() as patch:
        patch.setattr(Issuing, "store", died)
        with pytest.raises(_Died):
            chain_service.issue(sale(request_id="r-1"))


class TestAnInterruptedChainSigning:
    def test_the_switch_stores_it_first_and_starts_after_it(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        run: Run,
        data_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Receipt 2 is the chain service's (it may hold it signed): the switch stores it
        unsigned first, so the new unit signs from 3 on, something waits (the outage of
        the chain unit) and the unit check is keyed to 3. It answered from_number 2 and
        waiting false, and recovery then stored 2 as the old unit's unsigned receipt."""
        _die_while_storing(chain_service, monkeypatch)
        db.close()  # the process ended
        unit = ("--id", "c2", "--zda", "AT1", "--data-dir", data_dir)
        expect(run("unit", "create-software", *unit), 0)
        switched = expect(
            run("unit", "switch", "KASSE-1", "c2", "--json", "--data-dir", data_dir), 0
        )
        done = json.loads(switched.stdout)
        assert (done["from_number"], done["waiting"]) == (3, True)
        receipts = _rows(data_dir, "SELECT number, signature_state, unit_id FROM receipts")
        assert receipts == [(1, "signed", "chain"), (2, "unsigned", "chain")]
        assert _rows(data_dir, "SELECT unit_id, ended_at FROM outages") == [("chain", None)]
        assert _rows(data_dir, "SELECT receipt_number FROM checks WHERE kind = 'unit'") == [(3,)]
        [(event,)] = _switches(data_dir)
        assert json.loads(event)["from_number"] == 3

    def test_a_switch_outside_the_receipt_service_is_refused(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:
        """switch_unit in a plain write transaction, the signing not stored: refused
        (rule signing-interrupted), nothing changed."""
        key, cert = create_software_unit(tmp_path / "units", name="c2")
        config = UnitConfig(
            id="c2", kind="software", zda="AT1", key_file=key, certificate_file=cert
        )
        add_unit(db, registry, config)
        _die_while_storing(chain_service, monkeypatch)
        with (
            pytest.raises(FiscalError, match=r"receipt 2 was interrupted.*\[signing-interrupted\]"),
            db.write_connection().transaction() as conn,
        ):
            switch_unit(conn, "KASSE-1", "c2", clock.now())
        assert _rows(db.path.parent, "SELECT active_unit FROM registers") == [("chain",)]


@pytest.fixture(name="two_switches")
def _two_switches(till: Till) -> None:
    """K3 on c1, switched to c2 (unit check of receipt 2) and c3 (of receipt 3), a sale
    after each: two open unit checks."""
    _units(till, c1="AT1", c2="AT1", c3="AT1")
    till("init", REGISTER, "--unit", "c1")
    for unit, request_id in (("c2", "a"), ("c3", "b")):
        _switch(till, unit)
        _sell(till, request_id)


@pytest.mark.usefixtures("two_switches")
class TestChecksDoneUnit:
    def _open(self, till: Till) -> list[tuple[int, str | None]]:
        listed = json.loads(till("checks", "list", "--all", "--json").stdout)
        return [(c["number"], c["reference"]) for c in listed if c["kind"] == "unit"]

    def test_the_same_reference_again_changes_nothing(self, till: Till, data_dir: Path) -> None:
        """The latest switch's check is recorded; the same command again finds it by its
        reference (it closed the other open check too, with the same reference)."""
        args = ("checks", "done", REGISTER, "unit", "--reference", "FON-C3", "--json")
        first = json.loads(till(*args).stdout)
        again = json.loads(till(*args).stdout)
        assert first == again
        assert first["number"] == 3
        assert self._open(till) == [(2, None), (3, "FON-C3")]
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.done'")) == 1

    def test_receipt_names_the_switch(self, till: Till) -> None:
        """--receipt 2 records the first switch's check; a receipt no check has is exit 6."""
        said = till("checks", "done", REGISTER, "unit", "--receipt", "2", "--reference", "FON-C2")
        assert f"{REGISTER}: unit check (receipts from 2 on) done" in flat(said.stdout)
        assert self._open(till) == [(2, "FON-C2"), (3, None)]
        args = ("checks", "done", REGISTER, "unit", "--receipt", "9", "--reference", "X")
        assert "no unit check of receipt 9" in flat(till(*args, code=6).stderr)


class TestTheWords:
    def test_checks_help_names_the_unit_check(self, run: Run) -> None:
        """`checks --help` listed the Startbeleg, Jahresbeleg and Schlussbeleg only."""
        assert "unit switch" in flat(expect(run("checks", "--help"), 0).stdout)

    def test_the_open_checks_metric_counts_unit_registrations(self) -> None:
        """The HELP of till_agent_belegchecks_open said Belegchecks and the
        decommissioning report, though a unit switch's check counts too."""
        out = Exposition()
        metrics._registers(out, [], 0.0)  # the register families, of no register
        [help_line] = [
            line
            for line in out.text().splitlines()
            if line.startswith("# HELP till_agent_belegchecks_open ")
        ]
        assert "unit switch" in help_line

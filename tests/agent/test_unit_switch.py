"""``till-agent unit switch``: a register whose unit failed for good goes on with another
(agent/unit_switch.py), on the command line and in the receipt service, on a till
database on disk; FlakyUnit (``simulate unit down``) is the unit that fails on demand."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from agent import unit_switch
from agent.at_rksv.verify import verify_files
from agent.checks import CheckWatch, load_checks
from agent.errors import FiscalError
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from agent.unit_switch import check_signs_now, switch_unit
from factories import Run, add_unit, expect, load_json, sale
from storage import TillDB

REGISTER = "K3"
OPEN = ("u1", "u2")
CLOSED_IDS = {"u1": "U:ATU12345678-K1", "u2": "U:ATU12345678-K2"}

Till = Callable[..., Result]


@pytest.fixture(name="till")
def _till(run: Run, data_dir: Path) -> Till:
    """The command line on the test's data directory: ``till(*args, code=0)``."""

    def till(*args: str | Path, code: int = 0, input: str | None = None) -> Result:
        return expect(run(*args, "--data-dir", data_dir, input=input), code)

    return till


def _units(till: Till, *, closed: bool = False, zda: str = "AT100") -> None:
    """Units u1 and u2 (both switchable with ``simulate unit``) and register K3 on both,
    signing with u1, as the reviewer set it up."""
    for unit in OPEN:
        system = ("--key-id", CLOSED_IDS[unit]) if closed else ("--zda", zda)
        till("unit", "create-software", "--id", unit, "--simulate", *system)
    till("init", REGISTER, "--unit", "u1", "--unit", "u2")


def _sell(till: Till, request_id: str) -> dict[str, Any]:
    raw = json.dumps(sale(request_id=request_id, register=REGISTER))
    return dict(json.loads(till("issue", "-", "--json", input=raw).stdout))


def _rows(data_dir: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _active(data_dir: Path) -> str:
    [(unit,)] = _rows(data_dir, "SELECT active_unit FROM registers WHERE id = ?", REGISTER)
    return str(unit)


def _switch_json(till: Till, unit: str, code: int = 0) -> dict[str, Any]:
    return dict(json.loads(till("unit", "switch", REGISTER, unit, "--json", code=code).stdout))


class TestTheReviewersScenario:
    @pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
    def test_a_register_goes_on_with_its_second_unit_after_the_first_failed_for_good(
        self, till: Till, data_dir: Path, tmp_path: Path, closed: bool
    ) -> None:
        """u1 goes down for good: recovery and the Schlussbeleg wait for it. After the
        switch to u2, outage recover ends the outage with a Sammelbeleg u2 signed, the
        register sells and closes, and the DEP (one chain across both units) verifies."""
        _units(till, closed=closed)
        assert _sell(till, "a")["signature_state"] == "signed"
        till("simulate", "unit", "down", "--unit", "u1")
        assert [_sell(till, r)["signature_state"] for r in "bc"] == ["fallback", "fallback"]
        till("outage", "recover", REGISTER, code=4)
        till("special", REGISTER, "closing", "--yes", code=4)

        switched = till("unit", "switch", REGISTER, "u2").stdout
        assert f"register {REGISTER} signs with unit u2 from receipt 5 on (was u1)" in switched
        assert f"till-agent outage recover {REGISTER}" in switched
        recovered = json.loads(till("outage", "recover", REGISTER, "--json").stdout)
        assert recovered["issued"] == [{"number": 5, "kind": "sammelbeleg", "state": "signed"}]
        assert _sell(till, "d")["signature_state"] == "signed"
        till("special", REGISTER, "closing", "--yes")

        by_unit = _rows(data_dir, "SELECT number, unit_id FROM receipts ORDER BY number")
        assert by_unit == [(n, "u1") for n in range(1, 5)] + [(n, "u2") for n in (5, 6, 7)]
        [(outage_end,)] = _rows(data_dir, "SELECT sammelbeleg_number FROM outages")
        assert outage_end == 5
        dep, container = tmp_path / "dep.json", tmp_path / "container.json"
        till("export", "dep", "--register", REGISTER, "-o", dep)
        till("export", "crypto-container", "--register", REGISTER, "-o", container)
        report = verify_files(dep, container)
        assert report.ok, report.findings
        assert report.receipts == 7
        groups = [len(g["Belege-kompakt"]) for g in load_json(dep)["Belege-Gruppe"]]
        assert groups == ([7] if closed else [4, 3])  # a new group for u2's certificate

    def test_a_planned_switch_signs_the_next_receipt_with_the_new_unit(
        self, till: Till, data_dir: Path
    ) -> None:
        """No outage (a certificate replaced in time): the next sale is signed by u2 and
        nothing waits."""
        _units(till)
        done = _switch_json(till, "u2")
        assert done == {
            "register": REGISTER,
            "old_unit": "u1",
            "unit": "u2",
            "switched": True,
            "added": False,
            "from_number": 2,
            "waiting": False,
            "due": None,  # a development unit owes nothing
            "owed": "development",
            "replaced": None,
            "withdrawn": None,
            "again": False,
        }
        assert _sell(till, "a")["signature_state"] == "signed"
        assert _rows(data_dir, "SELECT unit_id FROM receipts WHERE number = 2") == [("u2",)]


class TestTheSwitch:
    def test_a_unit_new_to_the_register_joins_its_units(self, till: Till, data_dir: Path) -> None:
        """u3 was not among K3's units: it is added after them (the DEP export and the
        crypto container read them), and the container holds its certificate."""
        _units(till)
        till("unit", "create-software", "--id", "u3")
        assert _switch_json(till, "u3")["added"] is True
        units = _rows(
            data_dir,
            "SELECT position, unit_id FROM register_units WHERE register_id = ? ORDER BY 1",
            REGISTER,
        )
        assert units == [(0, "u1"), (1, "u2"), (2, "u3")]
        assert _active(data_dir) == "u3"

    def test_the_switch_is_journaled(self, till: Till, data_dir: Path) -> None:
        """One append-only event names the register, the old unit and the new one."""
        _units(till)
        _switch_json(till, "u2")
        [(register_id, data)] = _rows(
            data_dir, "SELECT register_id, data FROM journal WHERE kind = 'register.unit_switched'"
        )
        assert register_id == REGISTER
        event = json.loads(data)
        assert (event["old_unit"], event["new_unit"], event["from_number"]) == ("u1", "u2", 2)

    def test_switching_back_and_forth_keeps_one_chain(
        self, till: Till, data_dir: Path, tmp_path: Path
    ) -> None:
        """u1 -> u2 -> u1: each switch is an event of its own; the DEP has a group per run
        of one unit's receipts and verifies."""
        _units(till)
        _sell(till, "a")
        _switch_json(till, "u2")
        _sell(till, "b")
        _switch_json(till, "u1")
        _sell(till, "c")
        events = _rows(data_dir, "SELECT data FROM journal WHERE kind = 'register.unit_switched'")
        assert [json.loads(e)["new_unit"] for (e,) in events] == ["u2", "u1"]
        dep, container = tmp_path / "dep.json", tmp_path / "container.json"
        till("export", "dep", "--register", REGISTER, "-o", dep)
        till("export", "crypto-container", "--register", REGISTER, "-o", container)
        assert verify_files(dep, container).ok
        assert [len(g["Belege-kompakt"]) for g in load_json(dep)["Belege-Gruppe"]] == [2, 1, 1]

    def test_sales_before_the_recovery_are_fallback_receipts_of_the_new_unit(
        self, till: Till, data_dir: Path, tmp_path: Path
    ) -> None:
        """The outage stays open until the Sammelbeleg: a sale between the switch and the
        recovery is a fallback receipt naming the new unit, in its DEP group, and the
        Sammelbeleg right after it ends the outage; the DEP verifies."""
        _units(till)
        till("simulate", "unit", "down", "--unit", "u1")
        _sell(till, "a")
        _switch_json(till, "u2")
        assert _sell(till, "b")["signature_state"] == "fallback"
        till("outage", "recover", REGISTER)
        rows = _rows(data_dir, "SELECT number, kind, signature_state, unit_id FROM receipts")
        assert rows[2:] == [(3, "standard", "fallback", "u2"), (4, "sammelbeleg", "signed", "u2")]
        dep, container = tmp_path / "dep.json", tmp_path / "container.json"
        till("export", "dep", "--register", REGISTER, "-o", dep)
        till("export", "crypto-container", "--register", REGISTER, "-o", container)
        assert verify_files(dep, container).ok
        assert [len(g["Belege-kompakt"]) for g in load_json(dep)["Belege-Gruppe"]] == [2, 2]


class TestRefusals:
    def test_an_unknown_register_is_not_found(self, till: Till) -> None:
        _units(till)
        refused = till("unit", "switch", "K9", "u2", code=6)
        assert "register 'K9' is not initialized" in refused.stderr

    def test_an_unknown_unit_is_not_found(self, till: Till, data_dir: Path) -> None:
        """Exit 6 naming the unit, the rule, and how a unit is added."""
        _units(till)
        refused = _switch_json(till, "u9", code=6)
        assert "'u9'" in refused["message"]
        assert "[unit-unknown]" in refused["message"]
        assert "unit add-pkcs11" in refused["message"]
        assert _active(data_dir) == "u1"

    def test_a_unit_that_does_not_sign_now_is_refused(self, till: Till, data_dir: Path) -> None:
        """u2 is down: its test signature fails, exit 4 naming u2 and the rule; nothing is
        changed or journaled."""
        _units(till)
        till("simulate", "unit", "down", "--unit", "u2")
        refused = till("unit", "switch", REGISTER, "u2", code=4)
        assert "unit u2 does not sign now" in refused.stderr
        assert "[unit-signs]" in refused.stderr
        assert _active(data_dir) == "u1"
        assert _rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'register.unit_switched'") == []

    def test_a_unit_whose_signature_does_not_verify_is_refused(
        self, till: Till, data_dir: Path
    ) -> None:
        _units(till)
        till("simulate", "unit", "garbage", "--unit", "u2")
        assert "[unit-signs]" in till("unit", "switch", REGISTER, "u2", code=4).stderr
        assert _active(data_dir) == "u1"

    @pytest.mark.parametrize("register_closed", [False, True], ids=["open", "closed"])
    def test_a_unit_of_the_other_system_type_is_refused(
        self, till: Till, data_dir: Path, register_closed: bool
    ) -> None:
        """An open register never signs with an AT0 unit, nor a closed one with an open
        unit: the verifier's system-type-changed, exit 3."""
        _units(till, closed=register_closed)
        other = () if register_closed else ("--key-id", "U:ATU12345678-K9")
        till("unit", "create-software", "--id", "other", *other)
        refused = _switch_json(till, "other", code=3)
        assert (refused["field"], refused["rule"]) == ("unit", "system-type-changed")
        assert "other" in refused["message"]
        assert _active(data_dir) == "u1"

    def test_a_closed_unit_with_a_key_id_of_the_register_and_another_key_is_refused(
        self, till: Till, data_dir: Path
    ) -> None:
        """Receipts and the crypto container tell units apart by the key id."""
        _units(till, closed=True)
        till("unit", "create-software", "--id", "twin", "--key-id", CLOSED_IDS["u1"])
        assert _switch_json(till, "twin", code=3)["rule"] == "serial-unique"
        assert _active(data_dir) == "u1"

    def test_a_decommissioned_register_is_refused(self, till: Till) -> None:
        """After its Schlussbeleg a register signs nothing more: exit 4."""
        _units(till)
        till("special", REGISTER, "closing", "--yes")
        assert _switch_json(till, "u2", code=4)["rule"] == "register-closed"

    def test_the_unit_it_signs_with_already_is_nothing_to_do(
        self, till: Till, data_dir: Path
    ) -> None:
        """Exit 0, saying so; no event, no test signature (the unit may even be down)."""
        _units(till)
        till("simulate", "unit", "down", "--unit", "u1")
        said = till("unit", "switch", REGISTER, "u1").stdout
        assert "signs with unit u1 already: nothing was changed" in said
        assert _switch_json(till, "u1")["switched"] is False
        assert _rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'register.unit_switched'") == []


class TestObligations:
    def test_a_certified_unit_owes_its_registration_as_a_new_registers_does(
        self, till: Till, data_dir: Path
    ) -> None:
        """A switch to a unit that is not a development one: register it in FinanzOnline,
        report the failed one, check a receipt it signed; due a week after the switch,
        listed and recorded as the other checks."""
        _units(till, zda="AT1")
        said = till("unit", "switch", REGISTER, "u2").stdout
        due = (dt.datetime.now(dt.UTC).astimezone().date() + dt.timedelta(days=7)).isoformat()
        assert "report the failure of unit u1 and register unit u2 in FinanzOnline" in said
        assert f"till-agent checks done {REGISTER} unit --receipt 2 --reference" in said
        listed = json.loads(till("checks", "list", "--json").stdout)
        assert [(c["kind"], c["number"]) for c in listed] == [("start", 1), ("unit", 2)]
        assert abs(dt.date.fromisoformat(listed[1]["due"]) - dt.date.fromisoformat(due)).days <= 1
        till("checks", "done", REGISTER, "unit", "--reference", "FON-4711")
        assert [c["kind"] for c in json.loads(till("checks", "list", "--json").stdout)] == ["start"]

    def test_a_development_unit_owes_nothing(self, till: Till, data_dir: Path) -> None:
        _units(till)
        said = till("unit", "switch", REGISTER, "u2").stdout
        assert "u2 is a development unit (AT100)" in said
        assert _rows(data_dir, "SELECT kind FROM checks") == []

    def test_each_switch_owes_its_own_registration(self, till: Till, data_dir: Path) -> None:
        """Two switches in one year owe two; a switch undone before any receipt was signed
        leaves the one obligation of the receipts from then on."""
        _units(till, zda="AT1")
        till("unit", "create-software", "--id", "u3", "--zda", "AT1")
        _switch_json(till, "u2")
        _switch_json(till, "u3")  # no receipt in between: the same receipts from 2 on
        _sell(till, "a")
        _switch_json(till, "u1")
        owed = _rows(data_dir, "SELECT kind, receipt_number FROM checks ORDER BY id")
        assert owed == [("start", 1), ("unit", 2), ("unit", 3)]


class TestInTheService:
    def test_one_transaction(
        self, db: TillDB, registry: UnitRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A switch that fails on its way (here: recording its obligation) leaves the
        register, its units and the journal as they were."""
        service = _two_units(db, registry, tmp_path)
        before = _rows(db.path.parent, "SELECT count(*) FROM journal")

        def fail(*args: object, **kwargs: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(unit_switch, "record_due", fail)
        with pytest.raises(sqlite3.OperationalError), db.write_connection().transaction() as conn:
            switch_unit(conn, "KASSE-1", "u3", service.clock.now())
        assert _rows(db.path.parent, "SELECT active_unit FROM registers") == [("u1",)]
        assert _rows(db.path.parent, "SELECT unit_id FROM register_units") == [("u1",)]
        assert _rows(db.path.parent, "SELECT count(*) FROM journal") == before

    def test_the_check_timer_reminds_of_the_new_units_registration(
        self, db: TillDB, registry: UnitRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        service = _two_units(db, registry, tmp_path)
        with db.write_connection().transaction() as conn:
            switch_unit(conn, "KASSE-1", "u3", service.clock.now())
        caplog.set_level(logging.INFO, logger="agent.checks")
        raised = CheckWatch(db, service.clock).tick()
        assert [level for _, level in raised] == ["created", "created"]  # start, unit
        [line] = [r.getMessage() for r in caplog.records if "unit switch" in r.getMessage()]
        assert "register the signature unit of its unit switch (receipts from number 2 on)" in line
        assert "till-agent checks done KASSE-1 unit" in line

    def test_the_next_outage_is_the_new_units(
        self, db: TillDB, registry: UnitRegistry, tmp_path: Path
    ) -> None:
        """After the switch the new unit's failures open the register's outages (their
        reports are owed as for its own register's) and its Sammelbeleg closes them."""
        service = _two_units(db, registry, tmp_path)
        with db.write_connection().transaction() as conn:
            switch_unit(conn, "KASSE-1", "u3", service.clock.now())
            flaky = FlakyUnit(registry.get(conn, "u3"), mode="down")
        registry.put(flaky)
        assert service.issue(sale()).signature_state == "fallback"
        assert _rows(db.path.parent, "SELECT unit_id FROM outages") == [("u3",)]
        flaky.mode = "up"
        [sammelbeleg] = service.recover("KASSE-1") or []
        assert (sammelbeleg.kind, sammelbeleg.signature_state) == ("sammelbeleg", "signed")
        with db.read_connection() as conn:
            checks = load_checks(conn, "KASSE-1")
        assert [(c.kind, c.receipt_number) for c in checks] == [("start", 1), ("unit", 2)]

    def test_the_closed_outage_names_the_unit_that_signed_its_sammelbeleg(
        self, db: TillDB, registry: UnitRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """u1 fails, the register is switched to u3, whose Sammelbeleg ends the outage: the
        log line said "unit u1 signs again", of the unit that never did."""
        service = _two_units(db, registry, tmp_path)
        with db.read_connection() as conn:
            registry.put(FlakyUnit(registry.get(conn, "u1"), mode="down"))
        assert service.issue(sale()).signature_state == "fallback"
        with db.write_connection().transaction() as conn:
            switch_unit(conn, "KASSE-1", "u3", service.clock.now())
        caplog.set_level(logging.INFO, logger="agent.outages")
        [sammelbeleg] = service.recover("KASSE-1") or []
        assert (sammelbeleg.kind, sammelbeleg.number) == ("sammelbeleg", 3)
        [line] = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
        assert "unit u3 (which replaced unit u1) signed; Sammelbeleg 3" in line, line
        assert "signs again" not in line

    def test_a_chain_service_is_asked_whether_it_answers_and_keeps_no_test_receipt(
        self, db: TillDB, registry: UnitRegistry, tmp_path: Path, chain_unit: str, chain: Any
    ) -> None:
        """A chain service keeps every receipt it signs: the switch only asks its health
        (down: refused, rule unit-signs); the next sale is the first receipt it keeps."""
        service = _two_units(db, registry, tmp_path)
        with db.read_connection() as conn:
            unit = registry.get(conn, chain_unit)
        chain.mode = "down"
        with pytest.raises(FiscalError, match=r"unit chain does not sign now.*\[unit-signs\]"):
            check_signs_now(unit, 1.0)
        chain.mode = "up"
        check_signs_now(unit, 1.0)
        with db.write_connection().transaction() as conn:
            switch_unit(conn, "KASSE-1", chain_unit, service.clock.now())
        assert chain.receipts_stored == 0
        assert service.issue(sale()).signature_state == "signed"
        assert chain.receipts_stored == 1


def _two_units(db: TillDB, registry: UnitRegistry, tmp_path: Path) -> ReceiptService:
    """KASSE-1 on u1 (AT1), and u3 (AT1) stored but not among its units."""
    for name in ("u1", "u3"):
        key, cert = create_software_unit(tmp_path / "units", name=name)
        config = UnitConfig(
            id=name, kind="software", zda="AT1", key_file=key, certificate_file=cert
        )
        add_unit(db, registry, config)
    service = ReceiptService(db, registry)
    service.init_register(RegisterSetup("KASSE-1", ["u1"]))
    return service

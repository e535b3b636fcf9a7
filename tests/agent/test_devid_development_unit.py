"""What makes a register a development register: its receipt's unit signs under the
fictitious provider AT100 (suite R1-AT100, rksv.md 1.2), whatever the unit is called. A
closed-system (AT0) unit that an earlier version let the operator name
``dev-uncertified`` owes every FinanzOnline step; ``unit create-software`` with its
defaults (id ``dev``, AT100) owes none."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import REGISTER

from agent.checks import CheckWatch, development_units, load_checks
from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch
from agent.outages import load_outages
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.config import DEV_UNIT, DEV_ZDA
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, db_rows, expect, flat, sale
from storage import TillDB

OTHER = "KASSE-9"
KEY_ID = "U:ATU12345678-K1"
HOUR = 3600.0


def _owed(db: TillDB) -> list[tuple[str, str]]:
    with db.read_connection() as conn:
        return [(c.register_id, c.kind) for c in load_checks(conn, done=True)]


def _closed_system_named_dev(tmp_path: Path) -> UnitConfig:
    """A closed-system (R1-AT0) production unit under the development unit's id, as
    `unit create-software --id dev-uncertified --key-id ...` stored it before the id was
    reserved."""
    key_file, _ = create_software_unit(tmp_path / "at0", name=DEV_UNIT, key_id=KEY_ID)
    return UnitConfig(id=DEV_UNIT, kind="software", zda="AT0", key_file=key_file, key_id=KEY_ID)


def _at100_named_otherwise(tmp_path: Path) -> UnitConfig:
    """A self-signed AT100 unit as `unit create-software` makes it with its defaults."""
    key_file, cert_file = create_software_unit(tmp_path / "at100", name="devbox")
    return UnitConfig(
        id="devbox", kind="software", zda=DEV_ZDA, key_file=key_file, certificate_file=cert_file
    )


@pytest.fixture(name="other_unit")
def _other_unit(
    request: pytest.FixtureRequest,
    service: ReceiptService,
    registry: UnitRegistry,
    tmp_path: Path,
) -> tuple[UnitConfig, FlakyUnit]:
    """KASSE-9 initialized on the unit the test's parameter makes, next to the conftest's
    KASSE-1 (AT1, production); its unit wrapped so the test can switch it down."""
    config = request.param(tmp_path)
    add_unit(service.db, registry, config)
    service.init_register(RegisterSetup(OTHER, [config.id]))
    with service.db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, config.id))
    registry.put(flaky)
    return config, flaky


BY_PROVIDER = pytest.mark.parametrize(
    ("other_unit", "development"),
    [(_closed_system_named_dev, False), (_at100_named_otherwise, True)],
    ids=["AT0-named-dev-uncertified", "AT100-named-devbox"],
    indirect=["other_unit"],
)


class TestTheProviderDecides:
    @BY_PROVIDER
    def test_the_startbeleg_owes_its_check_unless_the_unit_signs_as_at100(
        self,
        service: ReceiptService,
        other_unit: tuple[UnitConfig, FlakyUnit],
        development: bool,
        clock: FrozenClock,
    ) -> None:
        """The AT0 unit called dev-uncertified owes the start check (created, journaled,
        reminded); the AT100 unit called devbox owes none, and is the only development
        unit the predicate names."""
        config, _ = other_unit
        with service.db.read_connection() as conn:
            assert development_units(conn) == ({config.id} if development else set())
        CheckWatch(service.db, clock).tick()
        expected = [(REGISTER, "start")] + ([] if development else [(OTHER, "start")])
        assert sorted(_owed(service.db)) == sorted(expected)
        journaled = db_rows(
            service.db, "SELECT register_id FROM journal WHERE kind = 'check.due' ORDER BY seq"
        )
        assert [row[0] for row in journaled] == [REGISTER] + ([] if development else [OTHER])

    @BY_PROVIDER
    def test_an_outage_past_48_hours_owes_its_report_unless_the_unit_signs_as_at100(
        self,
        service: ReceiptService,
        other_unit: tuple[UnitConfig, FlakyUnit],
        development: bool,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """49 h down: the AT0 unit named dev-uncertified gets its report date and the
        ERROR to report it; the AT100 unit named devbox none, and the WARNING that a
        development register needs no report."""
        caplog.set_level(logging.INFO)
        config, flaky = other_unit
        flaky.mode = "down"
        assert service.issue(sale(request_id="down", register=OTHER)).signature_state == (
            "fallback"
        )
        for _ in range(49):
            clock.advance(HOUR)
            watch.tick()
        with service.db.read_connection() as conn:
            [outage] = load_outages(conn, OTHER)
        assert outage.unit_id == config.id
        assert "exceeded" in outage.escalations
        assert (outage.report_due is None) is development
        said = [r.getMessage() for r in caplog.records]
        reminded = [m for m in said if "report it in FinanzOnline" in m]
        excused = [m for m in said if "a development register needs no FinanzOnline report" in m]
        assert (len(reminded), len(excused)) == ((0, 1) if development else (1, 0))


class TestTheCommandLine:
    def test_the_defaults_of_create_software_make_a_development_register(
        self, run: Run, data_dir: Path
    ) -> None:
        """`unit create-software` (id dev, AT100) then `init`: it needs no FinanzOnline
        step (no due date, no Belegcheck owed that could never be done); a closed-system
        unit's register owes its week as before."""
        expect(run("unit", "create-software", "--data-dir", data_dir), 0)
        prod = ("--id", "prod", "--key-id", KEY_ID)
        expect(run("unit", "create-software", *prod, "--data-dir", data_dir), 0)
        development = flat(
            expect(run("init", OTHER, "--unit", "dev", "--data-dir", data_dir), 0).stdout
        )
        production = flat(
            expect(run("init", REGISTER, "--unit", "prod", "--data-dir", data_dir), 0).stdout
        )
        assert "a development register needs no FinanzOnline step" in development
        assert "not registered in FinanzOnline; the DEP verification needs it" in development
        assert " by 20" not in development
        assert "a development register" not in production
        assert "AES key (register it in FinanzOnline, keep it secret): " in production
        assert "register the unit and the register in FinanzOnline" in production
        listed = expect(run("checks", "list", "--all", "--data-dir", data_dir, "--json"), 0)
        assert [(c["register"], c["kind"]) for c in json.loads(listed.stdout)] == [
            (REGISTER, "start")
        ]


def test_the_readme_says_what_makes_a_development_register() -> None:
    """The checks section names the provider as the test, not the unit id."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = " ".join(readme.read_text(encoding="utf-8").split())
    assert "A development register, one whose unit signs under the fictitious provider AT100" in (
        text
    )
    assert "what decides is the unit's provider, not its id" in text

"""What makes a register a development register: its receipt's unit signs under the
fictitious provider AT100 (suite R1-AT100, rksv.md 1.2), whatever the unit is called. A
closed-system (AT0) unit that an earlier version let the operator name
``dev-uncertified`` owes every FinanzOnline step; ``unit create-software`` with its
defaults (id ``dev``, AT100) owes none. The id ``dev-uncertified`` is reserved for the
unit ``run`` creates: the unit commands refuse it, ``[[units]]`` only lists it as made."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import REGISTER

from agent.checks import CheckWatch, development_units, load_checks
from agent.clock import FrozenClock
from agent.config import load_config
from agent.errors import ConfigurationError
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
    def test_the_reviewers_closed_system_unit_cannot_take_the_id(
        self, run: Run, data_dir: Path
    ) -> None:
        """`unit create-software --id dev-uncertified --key-id ...` is exit 3 naming --id
        and the rule; nothing is left behind (no key file, no database)."""
        result = run(
            "unit",
            "create-software",
            "--id",
            DEV_UNIT,
            "--key-id",
            KEY_ID,
            "--data-dir",
            data_dir,
        )
        said = flat(expect(result, 3).stderr)
        assert f"--id: '{DEV_UNIT}' is reserved for the development unit" in said
        assert "choose another --id [reserved]" in said
        assert not data_dir.exists()  # refused before the till database is opened

    @pytest.mark.parametrize("command", ["create-software", "add-pkcs11"])
    def test_both_unit_commands_refuse_the_id(
        self, run: Run, data_dir: Path, tmp_path: Path, command: str
    ) -> None:
        pin = tmp_path / "pin"
        pin.write_text("1234\n", encoding="utf-8")
        pin.chmod(0o600)
        pkcs11 = ["--module", "/nonexistent.so", "--token-label", "t", "--key-label", "k"]
        extra = [*pkcs11, "--pin-file", str(pin), "--key-id", KEY_ID]
        args = ["unit", command, "--id", DEV_UNIT, *(extra if command == "add-pkcs11" else [])]
        said = flat(expect(run(*args, "--data-dir", data_dir), 3).stderr)
        assert "[reserved]" in said

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


class TestTheConfiguration:
    @pytest.mark.parametrize(
        "entry",
        [
            f'{{id = "{DEV_UNIT}", kind = "software", zda = "AT0", key_id = "{KEY_ID}",'
            ' key_file = "k.pem"}',
            f'{{id = "{DEV_UNIT}", kind = "pkcs11", zda = "AT1", module = "/m.so",'
            ' token_label = "t", key_label = "k", certificate_file = "c.pem"}',
            f'{{id = "{DEV_UNIT}", kind = "software", zda = "AT2", key_file = "k.pem",'
            ' certificate_file = "c.pem"}',
        ],
        ids=["closed-system", "pkcs11", "other-provider"],
    )
    def test_another_unit_under_the_id_is_refused_naming_the_field(
        self, tmp_path: Path, entry: str
    ) -> None:
        env = {"TILL_AGENT_DATA_DIR": str(tmp_path), "TILL_AGENT_UNITS": f"[{entry}]"}
        with pytest.raises(ConfigurationError) as refused:
            load_config(None, env=env)
        message = str(refused.value)
        assert message.startswith(f"units.0.id: '{DEV_UNIT}' is reserved for the development")
        assert message.endswith("needs another id [reserved] (from TILL_AGENT_UNITS)")

    @pytest.mark.parametrize("zda", [DEV_ZDA, "AT1"])
    def test_the_development_unit_as_made_may_be_listed(self, tmp_path: Path, zda: str) -> None:
        """A till whose register signs with dev-uncertified lists it in [[units]] next to
        the others (`config check` asks for it): as `run` made it, AT100, or AT1 as an
        earlier version did."""
        files = 'key_file = "k.pem", certificate_file = "c.pem"'
        entry = f'{{id = "{DEV_UNIT}", kind = "software", zda = "{zda}", {files}}}'
        env = {"TILL_AGENT_DATA_DIR": str(tmp_path), "TILL_AGENT_UNITS": f"[{entry}]"}
        [unit] = load_config(None, env=env).units
        assert (unit.id, unit.zda) == (DEV_UNIT, zda)


def test_the_readme_says_what_makes_a_development_register() -> None:
    """The checks section names the provider as the test, not the unit id."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = " ".join(readme.read_text(encoding="utf-8").split())
    assert "A development register, one whose unit signs under the fictitious provider AT100" in (
        text
    )
    assert "what decides is the unit's provider, not its id" in text

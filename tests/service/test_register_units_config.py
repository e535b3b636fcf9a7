"""A configuration whose ``[[units]]`` are not the units of the existing register it names:
the register keeps signing with its own units (they are registered with FinanzOnline),
and nobody is left to find that out from the receipts. ``config check`` refuses it,
``run`` logs an ERROR, and refuses to start when the register signs with the development
unit although ``development_unit = false``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from service.conftest import Start

from agent.errors import ConfigurationError
from agent.service import DEV_UNIT
from agent.signing import create_software_unit
from factories import Run, cli_run, expect, flat

pytestmark = pytest.mark.usefixtures("no_system_config")

PROD: dict[str, Any] = {
    "id": "prod",
    "kind": "software",
    "zda": "AT0",
    "key_file": "units/prod.key.pem",
    "key_id": "U:ATU12345678-K1",
}


@pytest.fixture(name="run")
def _run() -> Run:
    return cli_run()


@pytest.fixture(name="prod_key")
def _prod_key(data_dir: Path) -> Path:
    """The production unit's key, where the configuration names it."""
    key_file, _ = create_software_unit(data_dir / "units", name="prod", key_id=PROD["key_id"])
    return key_file


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _check(run: Run, tmp_path: Path, data_dir: Path, production: bool) -> Any:
    """``config check`` of [register] KASSE-1 on unit prod (development_unit = false)."""
    units = (
        '[[units]]\nid = "prod"\nkind = "software"\nzda = "AT0"\n'
        'key_file = "units/prod.key.pem"\nkey_id = "U:ATU12345678-K1"\n'
    )
    config = tmp_path / "prod.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\ndevelopment_unit = {"false" if production else "true"}\n'
        f'[register]\nid = "KASSE-1"\n{units}[backup]\ndir = "{tmp_path / "backups"}"\n',
        encoding="utf-8",
    )
    return run("config", "check", "--config", config)


@pytest.mark.usefixtures("prod_key")
class TestDevelopmentRegister:
    def test_run_refuses_it_with_development_unit_false(self, start: Start) -> None:
        """KASSE-1 was made by a first `run` on defaults: with the production
        configuration the start stops (a configuration error), naming the register, the
        unit and what to do."""
        start().stop()
        with pytest.raises(ConfigurationError) as refused:
            start(development_unit=False, units=[PROD])
        message = str(refused.value)
        assert "KASSE-1" in message
        assert DEV_UNIT in message
        assert "till-agent init" in message
        assert "--unit prod" in message
        assert "FinanzOnline" in message

    def test_run_refuses_it_without_configured_units(self, start: Start) -> None:
        """development_unit = false and no [[units]]: still no selling on the development unit."""
        start().stop()
        with pytest.raises(ConfigurationError, match=DEV_UNIT):
            start(development_unit=False)

    def test_config_check_refuses_it(
        self, start: Start, run: Run, tmp_path: Path, data_dir: Path
    ) -> None:
        start().stop()
        refused = expect(_check(run, tmp_path, data_dir, production=True), 3)
        message = flat(refused.stderr)
        assert "KASSE-1" in message
        assert DEV_UNIT in message
        assert "prod" in message


class TestAnotherProductionUnit:
    @pytest.fixture(autouse=True)
    def _register_on_k1(self, run: Run, data_dir: Path, prod_key: Path) -> None:
        """KASSE-1 set up on unit k1 (``unit create-software`` + ``init``)."""
        expect(run("unit", "create-software", "--id", "k1", "--data-dir", data_dir), 0)
        expect(run("init", "KASSE-1", "--unit", "k1", "--data-dir", data_dir), 0)

    def test_run_logs_an_error_and_keeps_the_registers_unit(
        self, start: Start, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.clear()
        service = start(development_unit=False, units=[PROD])
        [error] = [e for e in _errors(caplog) if "KASSE-1" in e]
        assert "k1" in error
        assert "prod" in error
        with service.db.read_connection() as conn:
            (active,) = conn.execute("SELECT active_unit FROM registers").fetchone()
        assert active == "k1"

    def test_config_check_says_so(self, run: Run, tmp_path: Path, data_dir: Path) -> None:
        refused = expect(_check(run, tmp_path, data_dir, production=True), 3)
        message = flat(refused.stderr)
        assert "KASSE-1" in message
        assert "k1" in message
        assert "prod" in message


class TestTheConfiguredUnits:
    def test_a_register_on_the_configured_unit_starts_quietly(
        self,
        start: Start,
        run: Run,
        tmp_path: Path,
        data_dir: Path,
        prod_key: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """`run` created KASSE-1 on unit prod: no error at the next start, check OK."""
        start(development_unit=False, units=[PROD]).stop()
        caplog.clear()
        start(development_unit=False, units=[PROD])
        assert not _errors(caplog)
        expect(_check(run, tmp_path, data_dir, production=True), 0)

    def test_a_register_of_init_without_configured_units_starts(
        self, start: Start, run: Run, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No [[units]]: the data directory's own register and unit are the operator's."""
        expect(run("unit", "create-software", "--id", "k1", "--data-dir", data_dir), 0)
        expect(run("init", "KASSE-1", "--unit", "k1", "--data-dir", data_dir), 0)
        caplog.clear()
        start(development_unit=False)
        assert not _errors(caplog)

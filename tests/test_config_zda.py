"""``zda`` is required for every configured unit but a software one: a PKCS#11 or chain
unit without it would sign as the fictitious test provider AT100 (``R1-AT100``), and its
register would owe no FinanzOnline step, so nothing would warn. The development software
unit keeps its default (AT100)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent.cli_config import config_app
from agent.config import load_config
from agent.errors import ConfigurationError
from agent.signing.config import DEV_ZDA
from factories import flat

pytestmark = pytest.mark.usefixtures("no_system_config")

# the keys each kind needs but zda (the files need not exist for the values to load)
_UNITS = {
    "pkcs11": (
        'id = "hsm"\nkind = "pkcs11"\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\n'
        'token_label = "till"\nkey_label = "k1"\npin = "1234"\ncertificate_file = "unit.crt"\n'
    ),
    "chain": 'id = "hsm"\nkind = "chain"\nurl = "https://sign.example"\ntoken_file = "token"\n',
}
_PROVIDERS = ('"AT1" (A-Trust)', '"AT2" (GlobalTrust)', '"AT3" (PrimeSign)')


def _config(tmp_path: Path, unit: str) -> Path:
    path = tmp_path / "till.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[[units]]\n{unit}', encoding="utf-8")
    return path


def _refusal(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as refused:
        load_config(path, env=env or {})
    return str(refused.value)


def _agent(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``till-agent ARGS`` as a process of its own (`run` sets up logging for good), with
    none of this machine's TILL_AGENT_* variables but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    clean |= {"HOME": str(home), "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestRequired:
    @pytest.mark.parametrize("kind", ["pkcs11", "chain"])
    def test_a_unit_without_zda_is_refused_naming_the_field_the_rule_and_the_values(
        self, tmp_path: Path, kind: str
    ) -> None:
        """The message names units.<id>.zda, the rule, why, and the values to choose
        from: the providers, AT0 where a closed system is possible, AT100 for tests."""
        path = _config(tmp_path, _UNITS[kind])
        message = _refusal(path)
        assert message.startswith(f"units.hsm.zda: a {kind} unit must name the trust service")
        assert message.endswith(f"[zda-required] (from {path})")
        assert f"would sign as R1-{DEV_ZDA}, the fictitious test provider" in message
        assert all(provider in message for provider in _PROVIDERS), message
        assert f'"{DEV_ZDA}" only for a test token or service' in message
        assert ('"AT0" for a closed system' in message) is (kind == "pkcs11")

    def test_the_units_of_the_environment_are_refused_as_well(self, tmp_path: Path) -> None:
        """TILL_AGENT_UNITS replaces the file's units: the same rule, its source named."""
        entry = '{id = "cloud", kind = "chain", url = "https://sign.example", token_file = "t"}'
        env = {"TILL_AGENT_DATA_DIR": str(tmp_path), "TILL_AGENT_UNITS": f"[{entry}]"}
        message = _refusal(None, env)
        assert message.startswith("units.cloud.zda: a chain unit must name")
        assert message.endswith("[zda-required] (from TILL_AGENT_UNITS)")

    @pytest.mark.parametrize("zda", ["AT1", "AT0", DEV_ZDA])
    def test_an_explicit_zda_loads_as_written(self, tmp_path: Path, zda: str) -> None:
        """A provider, a closed system (with its key id) and the test provider AT100
        (SoftHSM2 test tokens) are all taken as written."""
        extra = 'key_id = "U:ATU12345678-HSM1"\n' if zda == "AT0" else ""
        [unit] = load_config(_config(tmp_path, _UNITS["pkcs11"] + f'zda = "{zda}"\n' + extra)).units
        assert unit.zda == zda

    def test_a_software_unit_without_zda_keeps_signing_as_the_test_provider(
        self, tmp_path: Path
    ) -> None:
        """The development software unit's default is unchanged: AT100."""
        unit = 'id = "dev"\nkind = "software"\nkey_file = "k.pem"\ncertificate_file = "c.pem"\n'
        [loaded] = load_config(_config(tmp_path, unit)).units
        assert (loaded.kind, loaded.zda) == ("software", DEV_ZDA)


class TestCommands:
    def test_config_check_refuses_it_with_exit_3(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("COLUMNS", "200")
        app = typer.Typer()
        app.add_typer(config_app, name="config")
        path = _config(tmp_path, _UNITS["pkcs11"])
        result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
        assert result.exit_code == 3, result.output
        message = flat(result.stderr)
        assert "invalid configuration: units.hsm.zda: a pkcs11 unit must name" in message
        assert "[zda-required]" in message
        assert all(provider in message for provider in _PROVIDERS), message

    def test_run_refuses_it_with_exit_2_and_creates_nothing(self, tmp_path: Path) -> None:
        path = _config(tmp_path, _UNITS["pkcs11"])
        done = _agent(tmp_path, "run", "--config", str(path))
        assert done.returncode == 2, done.stderr
        message = flat(done.stderr)
        assert "units.hsm.zda: a pkcs11 unit must name" in message, message
        assert "[zda-required]" in message
        assert not (tmp_path / "data").exists()

    def test_init_on_the_configured_data_directory_refuses_it(self, tmp_path: Path) -> None:
        """`init` takes its data directory from the configuration (TILL_AGENT_CONFIG): one
        that does not load is named, and no database is made anywhere."""
        path = _config(tmp_path, _UNITS["pkcs11"])
        done = _agent(tmp_path, "init", "KASSE-1", "--unit", "hsm", TILL_AGENT_CONFIG=str(path))
        assert done.returncode == 2, done.stderr
        message = flat(done.stderr.replace("│", " "))
        assert "the configuration does not load" in message, message
        assert "units.hsm.zda: a pkcs11 unit must name" in message
        assert "[zda-required]" in message
        assert not (tmp_path / "data").exists()
        assert not list(tmp_path.glob("**/till.sqlite3"))

"""The configuration: defaults, the TOML file, environment overrides, errors that name the
key and the source, the API token file, the example file and ``till-agent config``."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import WriteConfig
from pydantic import BaseModel
from typer.testing import CliRunner, Result

from agent import config as config_module
from agent.at_rksv import REGISTER_ID_RULE
from agent.cli_config import config_app
from agent.config import (
    HIDDEN,
    AgentConfig,
    ensure_api_token,
    load_config,
)
from agent.errors import ConfigurationError
from agent.outage_watch import Thresholds
from agent.signing import create_software_unit

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "config.example.toml"

pytestmark = pytest.mark.usefixtures("no_system_config")


@pytest.fixture(name="home")
def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture(name="env")
def _env(home: Path) -> dict[str, str]:
    """A minimal environment: a home directory and nothing else."""
    return {"HOME": str(home)}


def _error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_config(path, env=env or {})
    return str(caught.value)


class TestDefaults:
    def test_no_file_no_environment_gives_a_working_development_till(
        self, env: dict[str, str], home: Path
    ) -> None:
        """With nothing configured, data lives in the user's data folder and a dev unit is due."""
        config = load_config(env=env)
        data = home / ".local" / "share" / "till-agent"
        assert config.data_dir == data
        assert config.wants_development_unit
        assert config.units == ()
        assert config.register_.id == "KASSE-1"
        assert config.register_.timezone == "Europe/Vienna"
        assert config.register_.counter_bytes == 8
        assert config.register_.receipt_id_format == "{number}"
        assert config.sign_timeout_s == 3.0
        assert (config.api.enabled, config.api.host, config.api.port) == (True, "127.0.0.1", 8765)
        assert config.api.token_file == data / "api-token"
        assert config.api.unix_socket is None
        assert config.spool.dir == data / "spool"
        assert (config.printer.kind, config.printer.dir) == ("file", data / "prints")
        assert config.hub.url is None

    def test_outage_and_probe_defaults_match_the_running_code(self, env: dict[str, str]) -> None:
        """The [outage] defaults are the Thresholds defaults; [probe] makes a 5 s..60 s backoff."""
        config = load_config(env=env)
        assert config.outage.thresholds() == Thresholds()
        backoff = config.probe.backoff()
        assert (backoff.initial, backoff.cap, backoff.jitter) == (5.0, 60.0, 0.2)

    def test_systemd_state_directory_wins(self, env: dict[str, str]) -> None:
        """Under systemd's StateDirectory= the data goes there."""
        env |= {"STATE_DIRECTORY": "/var/lib/till-agent", "XDG_DATA_HOME": "/x"}
        assert load_config(env=env).data_dir == Path("/var/lib/till-agent")

    def test_xdg_data_home_is_honoured(self, env: dict[str, str], tmp_path: Path) -> None:
        """$XDG_DATA_HOME/till-agent comes before ~/.local/share."""
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        assert load_config(env=env).data_dir == tmp_path / "xdg" / "till-agent"

    def test_without_a_home_the_data_is_in_till_data(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No usable home directory: ./till-data, made absolute."""
        monkeypatch.chdir(tmp_path)
        assert load_config(env={"HOME": "/nonexistent"}).data_dir == tmp_path / "till-data"

    def test_the_system_file_is_read_when_it_exists(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """/etc/till-agent/config.toml is used without --config."""
        config_module.SYSTEM_CONFIG.parent.mkdir()
        config_module.SYSTEM_CONFIG.write_text('[register]\nid = "SYS-1"\n')
        assert load_config(env=env).register_.id == "SYS-1"

    def test_an_explicit_file_must_exist(self, tmp_path: Path) -> None:
        """--config naming a missing file is an error naming the file."""
        message = _error(tmp_path / "missing.toml")
        assert str(tmp_path / "missing.toml") in message
        assert "does not exist" in message


class TestFile:
    def test_values_from_the_file(self, write_config: WriteConfig, tmp_path: Path) -> None:
        """Every section is read; relative paths are placed under data_dir."""
        path = write_config(
            f"""
            data_dir = "{tmp_path / "data"}"
            sign_timeout_s = 1.5
            [register]
            id = "K-7"
            receipt_id_format = "B{{number:06d}}"
            [api]
            port = 9000
            unix_socket = "api.sock"
            token_file = "/etc/till-agent/token"
            [printer]
            kind = "usb"
            usb_vendor = 0x04b8
            usb_product = 0x0202
            [hub]
            url = "https://hub.example"
            """.replace("\n            ", "\n")
        )
        config = load_config(path, env={})
        data = tmp_path / "data"
        assert config.data_dir == data
        assert config.sign_timeout_s == 1.5
        assert config.register_.id == "K-7"
        assert config.register_.receipt_id_format == "B{number:06d}"
        assert config.api.port == 9000
        assert config.api.unix_socket == data / "api.sock"
        assert config.api.token_file == Path("/etc/till-agent/token")
        assert (config.printer.usb_vendor, config.printer.usb_product) == (0x04B8, 0x0202)
        assert config.hub.url == "https://hub.example"

    def test_backups_default_under_data_dir_and_a_relative_dir_is_placed_there(
        self, write_config: WriteConfig, tmp_path: Path
    ) -> None:
        """[backup]: enabled by default, in <data_dir>/dep-backups; a relative dir is
        relative to data_dir like every other path."""
        data = tmp_path / "data"
        config = load_config(write_config(f'data_dir = "{data}"\n'), env={})
        assert (config.backup.enabled, config.backup.dir) == (True, data / "dep-backups")
        path = write_config(f'data_dir = "{data}"\n[backup]\nenabled = false\ndir = "b"\n')
        config = load_config(path, env={})
        assert (config.backup.enabled, config.backup.dir) == (False, data / "b")
        assert config.backup.same_disk_warning(data) is None  # disabled: nothing to warn

    def test_units_replace_the_development_unit(
        self, write_config: WriteConfig, tmp_path: Path
    ) -> None:
        """[[units]] are UnitConfig objects with key files under data_dir; no dev unit then."""
        path = write_config(
            f'data_dir = "{tmp_path}"\n[[units]]\nid = "closed"\nkind = "software"\n'
            'zda = "AT0"\nkey_file = "keys/closed.key.pem"\nkey_id = "U:ATU12345678-K1"\n'
        )
        config = load_config(path, env={})
        assert [unit.id for unit in config.units] == ["closed"]
        assert config.units[0].key_file == tmp_path / "keys" / "closed.key.pem"
        assert not config.wants_development_unit

    def test_the_configuration_is_immutable(self, env: dict[str, str]) -> None:
        """One validated object, passed around, never changed."""
        config = load_config(env=env)
        with pytest.raises(ValueError, match="frozen"):
            config.api.port = 1  # type: ignore[misc]


class TestEnvironment:
    def test_an_override_beats_the_file(self, write_config: WriteConfig) -> None:
        """TILL_AGENT_API__PORT=8080 wins over the file's port, as an integer."""
        path = write_config("[api]\nport = 9000\n")
        assert load_config(path, env={"TILL_AGENT_API__PORT": "8080"}).api.port == 8080

    def test_top_level_keys(self, tmp_path: Path) -> None:
        """TILL_AGENT_DATA_DIR and TILL_AGENT_DEVELOPMENT_UNIT address top-level keys."""
        env = {"TILL_AGENT_DATA_DIR": str(tmp_path), "TILL_AGENT_DEVELOPMENT_UNIT": "false"}
        config = load_config(env=env)
        assert config.data_dir == tmp_path
        assert config.development_unit is False

    def test_text_keys_take_the_value_verbatim(self) -> None:
        """A register id of digits stays text; numbers parse for numeric keys; a USB id is
        hex as lsusb prints it, also when its digits are all decimal (514 is 0x514)."""
        env = {
            "TILL_AGENT_REGISTER__ID": "1234",
            "TILL_AGENT_PRINTER__KIND": "usb",
            "TILL_AGENT_PRINTER__USB_VENDOR": "0x04b8",
            "TILL_AGENT_PRINTER__USB_PRODUCT": "514",
            "TILL_AGENT_API__ENABLED": "false",
        }
        config = load_config(env=env)
        assert config.register_.id == "1234"
        assert (config.printer.usb_vendor, config.printer.usb_product) == (0x04B8, 0x514)
        assert config.api.enabled is False

    def test_the_config_variable_is_not_an_override(self) -> None:
        """TILL_AGENT_CONFIG names the file (for --config) and is not a key."""
        assert load_config(env={"TILL_AGENT_CONFIG": "/somewhere.toml"}).api.port == 8765

    @pytest.mark.parametrize(
        "name",
        ["TILL_AGENT_A__B__C__D", "TILL_AGENT_API__", "TILL_AGENT___X", "TILL_AGENT_A__B__C"],
    )
    def test_a_malformed_variable_name_is_an_error(self, name: str) -> None:
        """Only <KEY>, <SECTION>__<KEY> and <SECTION>__<TABLE>__<KEY> exist, of real keys;
        the message names the variable."""
        assert name in _error(env={name: "1"})

    def test_a_key_of_a_table_inside_a_section(self) -> None:
        """The printer model's code table, e.g. for a container without a config file."""
        env = {
            "TILL_AGENT_PRINTER__ESCPOS__CODE_TABLE": "16",
            "TILL_AGENT_PRINTER__ESCPOS__QR": "image",
        }
        escpos = load_config(env=env).printer.escpos
        assert (escpos.code_table, escpos.qr) == (16, "image")

    def test_a_key_inside_a_non_table_is_an_error(self, write_config: WriteConfig) -> None:
        """A section the file set to a value cannot take a key from the environment."""
        path = write_config("api = 3\n")
        message = _error(path, env={"TILL_AGENT_API__PORT": "1"})
        assert message.startswith("api:")
        assert str(path) in message
        path = write_config("[printer]\nescpos = 3\n")
        message = _error(path, env={"TILL_AGENT_PRINTER__ESCPOS__QR": "image"})
        assert message.startswith("printer.escpos:")
        assert str(path) in message


ERRORS = [
    ("[api]\nport = 70000\n", "api.port", "less_than_equal"),
    ("[api]\nprot = 1\n", "api.prot", "extra_forbidden"),
    ("[apii]\nport = 1\n", "apii", "extra_forbidden"),
    ("colour = 1\n", "colour", "extra_forbidden"),
    ("sign_timeout_s = 0\n", "sign_timeout_s", "greater_than"),
    ('[register]\ntimezone = "Mars/Olympus"\n', "register.timezone", "time-zone"),
    ('[register]\nid = "KASSE_1"\n', "register.id", "id-format"),
    ('[register]\nid = ".."\n', "register.id", "id-format"),
    ('[register]\nid = "."\n', "register.id", "id-format"),
    ("[register]\ncounter_bytes = 4\n", "register.counter_bytes", "greater_than_equal"),
    ("[register]\ncounter_bytes = 17\n", "register.counter_bytes", "less_than_equal"),
    ('[register]\nreceipt_id_format = "B"\n', "register.receipt_id_format", "format"),
    ('[printer]\nkind = "network"\n', "printer.host", "kind-needs"),
    ('[printer]\nkind = "usb"\nusb_vendor = 1\n', "printer.usb_product", "kind-needs"),
    ('[printer]\nkind = "carrier-pigeon"\n', "printer.kind", "literal_error"),
    ('[printer]\nhost = "192.0.2.7"\n', "printer.kind", "kind-missing"),
    ("[printer]\nbaudrate = 19200\n", "printer.kind", "kind-missing"),
    ("[probe]\ninitial_s = 90\n", "probe.max_s", "order"),
    ("[outage]\nexceeded_hours = 72\n", "outage.exceeded_hours", "less_than_equal"),
    ("[outage]\nwarn_hours = 45\n", "outage.approaching_hours", "order"),
    ('[hub]\nurl = "ftp://hub"\n', "hub.url", "url"),
    ("[backup]\nfolder = 1\n", "backup.folder", "extra_forbidden"),
    ('[backup]\nenabled = "yes"\n', "backup.enabled", "bool_type"),
    ("[backup]\ndir = 3\n", "backup.dir", "path_type"),
    ('[[units]]\nid = "u"\nkind = "software"\n', "units.0", "value_error"),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "key", "rule"), ERRORS)
    def test_a_file_error_names_key_rule_and_file(
        self, write_config: WriteConfig, text: str, key: str, rule: str
    ) -> None:
        """``<key>: <message> [<rule>] (from <file>)``."""
        path = write_config(text)
        message = _error(path)
        assert message.startswith(f"{key}: ")
        assert f"[{rule}]" in message
        assert f"(from {path})" in message

    @pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Etc/GMT-1", "CET", "Mars/Olympus"])
    def test_a_register_stamps_austrian_local_time_only(
        self, write_config: WriteConfig, zone: str
    ) -> None:
        """Beleg-Datum-Uhrzeit is Austrian local time (reference/rksv.md 1.1): a zone that
        is not Europe/Vienna, even one with the same offset today, is refused by name."""
        path = write_config(f'[register]\ntimezone = "{zone}"\n')
        message = _error(path)
        assert message.startswith("register.timezone: receipts carry Austrian local time")
        assert "the time zone must be Europe/Vienna, not " + zone in message
        assert "[time-zone]" in message

    def test_the_register_zone_from_the_environment_is_checked_too(self) -> None:
        """TILL_AGENT_REGISTER__TIMEZONE=UTC is named as the source."""
        message = _error(env={"TILL_AGENT_REGISTER__TIMEZONE": "UTC"})
        assert message.startswith("register.timezone: ")
        assert "(from TILL_AGENT_REGISTER__TIMEZONE)" in message

    def test_an_environment_error_names_the_variable(self) -> None:
        """The source of a bad override is the variable, not the file."""
        message = _error(env={"TILL_AGENT_API__PORT": "seventy"})
        assert message.startswith("api.port: ")
        assert "[int_parsing]" in message
        assert "(from TILL_AGENT_API__PORT)" in message

    def test_an_unknown_variable_is_an_unknown_key(self) -> None:
        """A typo in a variable name does not pass silently."""
        message = _error(env={"TILL_AGENT_API__PROT": "1"})
        assert message == "api.prot: unknown key [extra_forbidden] (from TILL_AGENT_API__PROT)"

    def test_a_combined_rule_names_every_source(self, write_config: WriteConfig) -> None:
        """A printer kind from the environment and a section from the file: both are named."""
        path = write_config("[printer]\nport = 9100\n")
        message = _error(path, env={"TILL_AGENT_PRINTER__KIND": "network"})
        assert message.startswith("printer.host: a network printer needs host")
        assert str(path) in message
        assert "TILL_AGENT_PRINTER__KIND" in message

    def test_a_printer_address_without_its_kind_is_refused(self, write_config: WriteConfig) -> None:
        """A host but no kind would print into preview files: the message says what to set."""
        message = _error(write_config('[printer]\nhost = "192.0.2.7"\n'))
        assert message.startswith(
            'printer.kind: host is for a network printer: set kind = "network" (the default'
        )

    def test_a_chosen_kind_keeps_the_keys_of_another(self, write_config: WriteConfig) -> None:
        """Switching a network printer to none (or to file previews) keeps its address for
        later: the kind was chosen, nothing is silently ignored."""
        for kind in ("none", "file"):
            path = write_config(f'[printer]\nkind = "{kind}"\nhost = "192.0.2.7"\n')
            assert load_config(path, env={}).printer.kind == kind

    def test_every_problem_is_reported_at_once(self, write_config: WriteConfig) -> None:
        """One line per problem, so one run fixes them all."""
        path = write_config("[api]\nport = -1\nhost = ''\n")
        assert _error(path).splitlines()[0].startswith("api.host: ")
        assert len(_error(path).splitlines()) == 2

    def test_a_toml_syntax_error_names_the_file_and_line(self, write_config: WriteConfig) -> None:
        """tomllib's position survives into the message."""
        path = write_config('[api]\nport = 8765\nhost = "127.0.0.1\n')
        message = _error(path)
        assert message.startswith(f"{path}: not valid TOML")
        assert "line 3" in message

    def test_a_file_that_is_not_utf8(self, tmp_path: Path) -> None:
        """Binary garbage is a TOML error naming the file, not a traceback."""
        path = tmp_path / "config.toml"
        path.write_bytes(b'[register]\nid = "\xff"\n')
        assert _error(path).startswith(f"{path}: not valid TOML")

    def test_secrets_are_not_echoed(self, write_config: WriteConfig) -> None:
        """Error messages never repeat values, so a PIN cannot leak through one."""
        path = write_config(
            '[[units]]\nid = "u"\nkind = "pkcs11"\nzda = "AT1"\npin = "s3cret-pin"\n'
        )
        assert "s3cret-pin" not in _error(path)


class TestApiToken:
    def test_created_private_and_then_reused(self, tmp_path: Path) -> None:
        """The first call creates a 0600 file (and its directory); later calls read it."""
        path = tmp_path / "data" / "api-token"
        token = ensure_api_token(path)
        assert len(token) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == token
        assert ensure_api_token(path) == token
        assert sorted(p.name for p in path.parent.iterdir()) == ["api-token"]

    def test_never_readable_by_others_even_while_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under umask 000 the file is still 0600 before it becomes visible under its name."""
        modes: list[int] = []
        real_link = os.link

        def spy_link(src: Any, dst: Any, **kwargs: Any) -> None:
            modes.append(stat.S_IMODE(os.stat(src).st_mode))
            real_link(src, dst, **kwargs)

        monkeypatch.setattr(os, "link", spy_link)
        old = os.umask(0)
        try:
            ensure_api_token(tmp_path / "api-token")
        finally:
            os.umask(old)
        assert modes == [0o600]

    def test_a_racing_creator_wins(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """If another process creates the file first, its token is the token."""
        path = tmp_path / "api-token"
        other = "T" * 43
        real_link = os.link

        def late_link(src: Any, dst: Any, **kwargs: Any) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, other.encode())
            os.close(fd)
            real_link(src, dst, **kwargs)

        monkeypatch.setattr(os, "link", late_link)
        assert ensure_api_token(path) == other
        assert sorted(p.name for p in tmp_path.iterdir()) == ["api-token"]

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
    def test_a_file_open_to_others_is_refused(self, tmp_path: Path, mode: int) -> None:
        """Group or world access is refused with the fix in the message."""
        path = tmp_path / "api-token"
        ensure_api_token(path)
        path.chmod(mode)
        with pytest.raises(ConfigurationError, match=re.escape(f"chmod 600 {path}")):
            ensure_api_token(path)

    def test_a_symlink_is_refused(self, tmp_path: Path) -> None:
        """The token file is opened without following links."""
        target = tmp_path / "real"
        ensure_api_token(target)
        (tmp_path / "api-token").symlink_to(target)
        with pytest.raises(ConfigurationError, match="cannot open"):
            ensure_api_token(tmp_path / "api-token")

    def test_an_empty_file_is_refused(self, tmp_path: Path) -> None:
        """An empty token would let anybody in: refuse it."""
        path = tmp_path / "api-token"
        path.touch(mode=0o600)
        with pytest.raises(ConfigurationError, match="no usable token"):
            ensure_api_token(path)


class TestExample:
    def test_the_example_loads(self) -> None:
        """docs/config.example.toml is valid as shipped."""
        config = load_config(EXAMPLE, env={})
        assert config.data_dir == Path("/var/lib/till-agent")
        assert config.units[0].kind == "pkcs11"
        assert not config.wants_development_unit
        assert config.printer.kind == "network"

    def test_the_example_mentions_every_key(self) -> None:
        """Every key of every section is in the example, set or commented out."""
        text = EXAMPLE.read_text(encoding="utf-8")
        for name, field in AgentConfig.model_fields.items():
            key = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                assert f"[{key}]" in text
                for sub, sub_field in annotation.model_fields.items():
                    table = sub_field.annotation
                    if isinstance(table, type) and issubclass(table, BaseModel):  # [a.b]
                        assert f"[{key}.{sub}]" in text, f"{key}.{sub}"
                        keys = list(table.model_fields)
                    else:
                        keys = [sub]
                    for leaf in keys:
                        assert re.search(rf"^(# )?{leaf} = ", text, re.MULTILINE), f"{key}.{leaf}"
            else:
                assert re.search(rf"^(# |\[\[)?{key}( = |\]\])", text, re.MULTILINE), key


# -- the command line -----------------------------------------------------------------------


@pytest.fixture(name="run")
def _run(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Invoke ``till-agent config ...`` in-process with the test's environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = typer.Typer()
    app.add_typer(config_app, name="config")
    runner = CliRunner()

    def run(*args: str | Path, **env_vars: str) -> Result:
        argv = ["config", *(str(a) for a in args)]
        return runner.invoke(app, argv, env=env_vars, prog_name="till-agent")

    return run


def _flat(text: str) -> str:
    return " ".join(text.split())


class TestCli:
    def test_check_accepts_the_defaults(self, run: Callable[..., Result]) -> None:
        """Exit 0 and say where the configuration came from."""
        result = run("check")
        assert result.exit_code == 0, result.output
        assert "configuration OK: built-in defaults" in _flat(result.stdout)

    def test_check_refuses_with_exit_3_and_the_key(self, run: Callable[..., Result]) -> None:
        """Exit 3 and the message with key, rule and source (Rich must not eat '[rule]')."""
        result = run("check", TILL_AGENT_API__PORT="-1")
        assert result.exit_code == 3
        assert "api.port: " in result.stderr
        assert "[greater_than_equal] (from TILL_AGENT_API__PORT)" in _flat(result.stderr)

    def test_check_json_for_scripts(self, run: Callable[..., Result]) -> None:
        """``--json``: one object on stdout, also for a refusal (with exit 3)."""
        result = run("check", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"ok": True, "source": "built-in defaults (no file)"}
        refused = run("check", "--json", TILL_AGENT_API__PORT="-1")
        assert refused.exit_code == 3
        body = json.loads(refused.stdout)
        assert body["error"] == "ConfigurationError"
        assert body["message"].startswith("api.port: ")

    def test_check_warns_when_the_backups_are_on_the_data_disk(
        self, run: Callable[..., Result], tmp_path: Path
    ) -> None:
        """The default backup directory is on the till's own disk, no external medium
        (§ 7 Abs 3 RKSV): a warning on stderr, still exit 0; another file system (here
        /proc, whose st_dev differs) is not warned about."""
        data = tmp_path / "data"
        result = run("check", "--json", TILL_AGENT_DATA_DIR=str(data))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["ok"] is True
        warning = _flat(result.stderr)
        assert f"warning: backup.dir: {data / 'dep-backups'} is on the same file system" in warning
        assert "not on an external medium (§ 7 Abs 3 RKSV)" in warning
        elsewhere = run(
            "check", TILL_AGENT_DATA_DIR=str(data), TILL_AGENT_BACKUP__DIR="/proc/till-backup"
        )
        assert elsewhere.exit_code == 0, elsewhere.output
        assert "backup.dir" not in elsewhere.stderr

    def test_check_refuses_a_register_id_init_would_refuse(
        self, run: Callable[..., Result], write_config: WriteConfig
    ) -> None:
        """A Kassen-ID '..' names the parent directory: ``config check`` refuses it with the
        same rule as ``till-agent init``, not only ``run`` at start."""
        path = write_config('[register]\nid = ".."\n')
        result = run("check", "--config", path)
        assert result.exit_code == 3
        assert f"register.id: {REGISTER_ID_RULE} [id-format]" in _flat(result.stderr)

    def test_check_a_missing_file(self, run: Callable[..., Result], tmp_path: Path) -> None:
        """--config naming a missing file: exit 3."""
        result = run("check", "--config", tmp_path / "nope.toml")
        assert result.exit_code == 3
        assert "does not exist" in _flat(result.stderr)

    def test_show_prints_toml_that_loads_back(
        self,
        run: Callable[..., Result],
        write_config: WriteConfig,
        tmp_path: Path,
        env: dict[str, str],
    ) -> None:
        """``config show`` is the effective configuration, itself a valid config file."""
        path = write_config(
            '[[units]]\nid = "u"\nkind = "software"\nkey_file = "k.pem"\n'
            'certificate_file = "c.pem"\n[api]\nport = 9001\n'
        )
        result = run("show", "--config", path, TILL_AGENT_REGISTER__ID="K-9")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"# file {path}; environment: TILL_AGENT_REGISTER__ID")
        shown = tmp_path / "shown.toml"
        shown.write_text(result.stdout)
        expected = load_config(path, env=env | {"TILL_AGENT_REGISTER__ID": "K-9"})
        assert load_config(shown, env={}) == expected

    def test_show_json_hides_the_pin(
        self, run: Callable[..., Result], write_config: WriteConfig
    ) -> None:
        """PINs are <hidden> in both formats; the token file is named, its content never read."""
        path = write_config(
            '[[units]]\nid = "h"\nkind = "pkcs11"\nzda = "AT1"\nmodule = "m.so"\n'
            'token_label = "t"\nkey_label = "k"\npin = "s3cret-pin"\ncertificate_file = "c.pem"\n'
        )
        shown = run("show", "--config", path, "--json")
        assert shown.exit_code == 0, shown.output
        data = json.loads(shown.stdout)
        assert data["units"][0]["pin"] == HIDDEN
        assert data["api"]["token_file"].endswith("api-token")
        assert "s3cret-pin" not in run("show", "--config", path).stdout

    def test_show_json_error(self, run: Callable[..., Result]) -> None:
        """With --json an invalid configuration is a JSON error object, exit 3."""
        result = run("show", "--json", TILL_AGENT_HUB__URL="nope")
        assert result.exit_code == 3
        assert json.loads(result.stdout)["message"].startswith("hub.url: ")

    def test_show_output_parses_as_toml(self, run: Callable[..., Result]) -> None:
        """Unset keys are comments, not invalid TOML."""
        result = run("show")
        assert "# hub.url" not in result.stdout
        assert "# url = (unset)" in result.stdout
        assert tomllib.loads(result.stdout)["api"]["port"] == 8765

    def test_show_prints_nested_tables(self, run: Callable[..., Result], tmp_path: Path) -> None:
        """``[printer.escpos]`` is shown (the README's own override example), and loads back."""
        result = run("show", TILL_AGENT_PRINTER__ESCPOS__CODE_TABLE="16")
        assert result.exit_code == 0, result.output
        assert "\n[printer.escpos]\ncode_table = 16\n" in result.stdout
        shown = tmp_path / "shown.toml"
        shown.write_text(result.stdout)
        assert load_config(shown, env={}).printer.escpos.code_table == 16

    def test_check_opens_the_software_unit_files(
        self, run: Callable[..., Result], write_config: WriteConfig, tmp_path: Path
    ) -> None:
        """A key or certificate `run` could not load fails the check, naming the unit."""
        key_file, cert_file = create_software_unit(tmp_path / "keys", name="good")
        good = write_config(
            f'[[units]]\nid = "good"\nkind = "software"\nkey_file = "{key_file}"\n'
            f'certificate_file = "{cert_file}"\n'
        )
        assert run("check", "--config", good).exit_code == 0
        cert_file.write_text("not a certificate")
        result = run("check", "--config", good, "--json")
        assert result.exit_code == 3, result.output
        assert json.loads(result.stdout)["message"].startswith("units.good: ")
        missing = write_config(
            '[[units]]\nid = "gone"\nkind = "software"\nkey_file = "/nonexistent/k.pem"\n'
            'certificate_file = "/nonexistent/c.pem"\n'
        )
        result = run("check", "--config", missing)
        assert result.exit_code == 3
        assert "units.gone: " in _flat(result.stderr)
        assert "/nonexistent/k.pem" in _flat(result.stderr)

    def test_check_a_pkcs11_unit_without_logging_in(
        self, run: Callable[..., Result], write_config: WriteConfig, tmp_path: Path
    ) -> None:
        """A missing module or certificate fails the check; the token is never asked."""
        path = write_config(
            '[[units]]\nid = "h"\nkind = "pkcs11"\nzda = "AT1"\nmodule = "/nonexistent/p11.so"\n'
            'token_label = "t"\nkey_label = "k"\npin = "1234"\n'
            f'certificate_file = "{tmp_path / "missing.crt"}"\n'
        )
        result = run("check", "--config", path)
        assert result.exit_code == 3
        message = _flat(result.stderr)
        assert "units.h: module: the PKCS#11 module /nonexistent/p11.so does not exist" in message
        assert "missing.crt" in message

    def test_check_a_usb_printer_without_its_extra(
        self, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`run` would refuse a USB printer without pyusb: so does the check."""
        from agent.printing._escpos import escpos_module

        usb = escpos_module("printer").Usb
        monkeypatch.setattr(usb, "is_usable", staticmethod(lambda: False))
        result = run(
            "check",
            TILL_AGENT_PRINTER__KIND="usb",
            TILL_AGENT_PRINTER__USB_VENDOR="04b8",
            TILL_AGENT_PRINTER__USB_PRODUCT="0202",
        )
        assert result.exit_code == 3
        assert "printer.kind: Usb printing needs pyusb" in _flat(result.stderr)

    def test_check_a_config_that_is_not_a_file(self, tmp_path: Path) -> None:
        """--config /dev/null exists but is no TOML file: say so, not "does not exist"."""
        message = _error(Path("/dev/null"))
        assert "not a regular file" in message


def test_commands_use_the_data_dir_of_till_agent_config(tmp_path: Path) -> None:
    """`receipts list` (like `run`) reads TILL_AGENT_CONFIG for its data directory."""
    data = tmp_path / "elsewhere"
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{data}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    env |= {"TILL_AGENT_CONFIG": str(config), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "receipts", "list", "--register", "K-1"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert f"no till database in {data}" in " ".join(done.stderr.split()), done.stderr
    assert done.returncode == 6  # not found: nothing is damaged or locked


def test_a_broken_configuration_is_not_replaced_by_a_guess(tmp_path: Path) -> None:
    """When the configuration does not load, commands do not fall back to the built-in
    data directory (another till's data, or a new empty database): they say why."""
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "d"}"\n[api]\nport = "x"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    env |= {"TILL_AGENT_CONFIG": str(config), "HOME": str(tmp_path), "COLUMNS": "200"}
    command = [sys.executable, "-m", "agent", "receipts", "list", "--register", "K-1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "the configuration does not load" in message, message
    assert "api.port" in message
    given = subprocess.run(
        [*command, "--data-dir", str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "no till database in" in " ".join(given.stderr.split()), given.stderr


class TestNoSilentCoercion:
    @pytest.mark.parametrize(
        ("text", "key", "rule"),
        [
            ("[api]\nport = true\n", "api.port", "number_type"),
            ('development_unit = "yes"\n', "development_unit", "bool_type"),
            (
                '[printer]\nkind = "network"\nhost = "p"\nport = false\n',
                "printer.port",
                "number_type",
            ),
            ('data_dir = ""\n', "data_dir", "path_empty"),
            ('data_dir = "a\\u0000b"\n', "data_dir", "path_nul"),
            ('[spool]\ndir = ""\n', "spool.dir", "path_empty"),
            (
                '[[units]]\nid = "u"\nkind = "software"\nkey_file = "k"\n'
                'key_id = "U:ATU12345678-K1"\nzda = "AT0"\nsimulate = 1\n',
                "units.0.simulate",
                "bool_type",
            ),
        ],
    )
    def test_a_value_of_the_wrong_type_is_refused(
        self, write_config: WriteConfig, text: str, key: str, rule: str
    ) -> None:
        """``port = true`` would be port 1, ``"yes"`` true, ``""`` the current directory."""
        message = _error(write_config(text))
        assert message.startswith(f"{key}: "), message
        assert f"[{rule}]" in message

    @pytest.mark.parametrize("text", ["", "\n\n", '# data_dir = "/var/lib/till-agent"\n'])
    def test_a_file_without_settings_is_refused(self, write_config: WriteConfig, text: str) -> None:
        """An empty file (cut to nothing by a power cut or a failed copy) would start a
        development till on the built-in defaults, in another data directory."""
        message = _error(write_config(text))
        assert "holds no settings" in message

    def test_an_empty_file_with_settings_from_the_environment_is_taken(
        self, write_config: WriteConfig, tmp_path: Path
    ) -> None:
        config = load_config(write_config(""), env={"TILL_AGENT_DATA_DIR": str(tmp_path / "d")})
        assert config.data_dir == tmp_path / "d"

    def test_a_byte_order_mark_is_accepted(self, write_config: WriteConfig) -> None:
        """Files saved by Windows editors start with a BOM, which tomllib refuses."""
        path = write_config("")
        path.write_bytes(b"\xef\xbb\xbf[api]\nport = 8766\n")
        assert load_config(path, env={}).api.port == 8766

    def test_check_a_directory_as_config(self, run: Callable[..., Result], tmp_path: Path) -> None:
        """Exit 3 and JSON like any refused configuration (not Typer's usage box)."""
        result = run("check", "--config", tmp_path, "--json")
        assert result.exit_code == 3, result.output
        assert "not a regular file" in json.loads(result.stdout)["message"]

    def test_check_a_data_dir_that_is_a_file(
        self, run: Callable[..., Result], write_config: WriteConfig, tmp_path: Path
    ) -> None:
        """`run` could not use it: the check says so."""
        (tmp_path / "afile").write_text("x")
        result = run("check", "--config", write_config(f'data_dir = "{tmp_path / "afile"}"\n'))
        assert result.exit_code == 3
        assert "data_dir: " in _flat(result.stderr)
        assert "is not a directory" in _flat(result.stderr)


def test_check_warns_when_printed_receipts_carry_no_business_name(
    run: Callable[..., Result], write_config: WriteConfig
) -> None:
    """§ 132a Abs 3 BAO: a warning on stderr (exit 0, --json stays one object on stdout)."""
    bare = run("check", "--json")
    assert bare.exit_code == 0
    assert json.loads(bare.stdout)["ok"] is True
    assert "business name" in _flat(bare.stderr)
    named = run("check", "--config", write_config('[printer]\nheader = ["Gasthaus Zur Post"]\n'))
    assert named.exit_code == 0
    assert "business name" not in _flat(named.stderr)

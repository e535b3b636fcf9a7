"""``[api] port = 0``: the operating system picks the port, the service names it (its log,
the systemd STATUS= line and ``<data_dir>/api-address``) and the commands that ask the
running service find it there (agent.local_api). ``TillService`` runs in-process; the
real ``till-agent run`` is tests/e2e/test_run.py's ``TestApiPortZero``."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from service.conftest import Start

from agent.config import AgentConfig, load_config
from agent.errors import ConfigurationError, DataDirLocked
from agent.local_api import address_file, post_to_service
from agent.service import TillService
from factories import Run, cli_run, expect, flat, sale
from storage import TillDB

PICKED = "(api.port = 0: the port the OS picked)"


@pytest.fixture(name="start")
def _start(start: Start) -> Start:
    """The service fixture with its API on port 0 unless given."""

    def start_on_port_zero(**settings: Any) -> TillService:
        return start(**{"api": {"port": 0}, **settings})

    return start_on_port_zero


@pytest.fixture(name="run")
def _run(monkeypatch: pytest.MonkeyPatch) -> Run:
    """The command line in-process, with no configuration from this machine's environment."""
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return cli_run()


def _config_file(tmp_path: Path, data_dir: Path, api: str = "port = 0") -> Path:
    path = tmp_path / "till.toml"
    text = f'data_dir = "{data_dir}"\n[printer]\nkind = "file"\n[api]\n{api}\n'
    path.write_text(text, encoding="utf-8")
    return path


def _url(till: TillService) -> str:
    assert till.api is not None
    return f"http://127.0.0.1:{till.api.port}"


class TestTheServiceNamesItsPort:
    def test_log_status_line_and_file_name_the_port_it_got(
        self, start: Start, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The port is a real one, the log line and the STATUS= line name it, the file
        holds the base URL, and the API answers there."""
        till = start()
        url = _url(till)
        assert not url.endswith(":0")
        lines = [r.getMessage() for r in caplog.records if "local API on" in r.getMessage()]
        assert lines == [f"local API on {url} {PICKED}"]
        assert till._status_line().endswith(f"; printer: disabled; API: {url}")
        assert address_file(till.config).read_text(encoding="ascii") == f"{url}\n"
        token = (till.config.data_dir / "api-token").read_text().strip()
        response = httpx.get(f"{url}/v1/status", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200

    def test_stopping_removes_the_file(self, start: Start) -> None:
        till = start()
        till.stop()
        assert not address_file(till.config).exists()

    def test_a_file_left_by_a_killed_service_is_replaced(
        self, start: Start, data_dir: Path
    ) -> None:
        """A SIGKILL leaves the file naming a port nobody listens on: the next start names
        its own."""
        data_dir.mkdir()
        (data_dir / "api-address").write_text("http://127.0.0.1:1\n", encoding="ascii")
        till = start()
        assert address_file(till.config).read_text() == f"{_url(till)}\n"

    @pytest.mark.parametrize("api", ["unix socket", "disabled"])
    def test_a_file_left_behind_is_removed_when_there_is_no_tcp_api(
        self, start: Start, data_dir: Path, api: str
    ) -> None:
        """A client must not be sent to a port of an earlier run."""
        data_dir.mkdir()
        (data_dir / "api-address").write_text("http://127.0.0.1:1\n", encoding="ascii")
        settings = {"unix_socket": data_dir / "api.sock"} if api == "unix socket" else {}
        till = start(api=settings or {"enabled": False})
        assert not address_file(till.config).exists()
        assert till._status_line().endswith(
            f"; API: unix socket {data_dir / 'api.sock'}" if settings else "printer: disabled"
        )

    def test_a_second_service_on_the_data_directory_leaves_the_file_alone(
        self, start: Start
    ) -> None:
        """The second one fails on the data directory's lock: the first one's file stays."""
        till = start()
        with pytest.raises(DataDirLocked):
            start()
        assert address_file(till.config).read_text() == f"{_url(till)}\n"

    def test_a_port_in_use_is_a_configuration_error_naming_it(
        self, start: Start, data_dir: Path
    ) -> None:
        """Someone listens on the configured port (this test, all along): the start fails
        naming host and port, and leaves no file naming it."""
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = int(taken.getsockname()[1])
            with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}: "):
                start(api={"port": port})
        assert not (data_dir / "api-address").exists()


class TestTheCommandsFindTheService:
    def test_reprint_goes_to_the_port_in_the_file(
        self, start: Start, run: Run, tmp_path: Path, data_dir: Path
    ) -> None:
        """``reprint --config`` with ``port = 0`` while the service holds the data
        directory: the copy is made by the service, found through the file."""
        start(printer={"kind": "file"})
        config = _config_file(tmp_path, data_dir)
        copied = expect(run("reprint", "KASSE-1", "1", "--config", config, "--json"), 0)
        assert json.loads(copied.stdout) == {"register": "KASSE-1", "number": 1, "copy": 1}

    def test_post_to_service_reaches_the_port_in_the_file(self, start: Start) -> None:
        till = start()
        response = post_to_service(till.config, "receipts", sale(request_id="via-file"))
        assert response.status_code == 201, response.text
        assert response.json()["number"] == 2


@pytest.fixture(name="locked")
def _locked(data_dir: Path, open_db: Callable[..., TillDB]) -> Path:
    """A data directory held by another process (standing in for `till-agent run`) that
    has not named an API address (yet), with the token the service would have written."""
    open_db(data_dir)
    (data_dir / "api-token").write_text("token\n", encoding="utf-8")
    return data_dir


class TestNoServiceToFind:
    def test_no_file_is_exit_2_naming_it(self, run: Run, locked: Path, tmp_path: Path) -> None:
        """The service does not listen (or not yet): a clean exit 2 naming the file."""
        config = _config_file(tmp_path, locked)
        message = flat(expect(run("reprint", "KASSE-1", "1", "--config", config), 2).stderr)
        assert f"{locked / 'api-address'} does not exist" in message
        assert "api.port = 0" in message
        body = json.loads(
            expect(run("reprint", "KASSE-1", "1", "--config", config, "--json"), 2).stdout
        )
        assert body["error"] == "ConfigurationError"
        assert str(locked / "api-address") in body["message"]

    def test_a_file_naming_a_dead_port_is_exit_2_naming_port_and_file(
        self, run: Run, locked: Path, tmp_path: Path
    ) -> None:
        """A killed service's file: the address tried and where it came from are named."""
        with socket.socket() as sock:  # bound, not listening: a connection is refused
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            (locked / "api-address").write_text(f"{url}\n", encoding="ascii")
            config = _config_file(tmp_path, locked)
            message = flat(expect(run("reprint", "KASSE-1", "1", "--config", config), 2).stderr)
        assert f"{url} (named in {locked / 'api-address'})" in message
        assert "ConnectError" in message

    @pytest.mark.parametrize("text", ["", "127.0.0.1:8765", "http://127.0.0.1", "http://h:99999"])
    def test_a_file_naming_no_address_is_a_connect_error(self, locked: Path, text: str) -> None:
        (locked / "api-address").write_text(text, encoding="ascii")
        config = AgentConfig.model_validate({"data_dir": locked, "api": {"port": 0}})
        with pytest.raises(httpx.ConnectError, match="names no http://HOST:PORT address"):
            post_to_service(config, "receipts", sale())


@pytest.mark.usefixtures("no_system_config")
class TestConfiguration:
    def test_port_0_is_accepted(self) -> None:
        assert load_config(env={"TILL_AGENT_API__PORT": "0"}).api.port == 0

    @pytest.mark.parametrize("port", ["-1", "65536"])
    def test_ports_out_of_range_are_refused_naming_the_key(self, port: str) -> None:
        with pytest.raises(
            ConfigurationError, match=r"^api\.port: .*\(from TILL_AGENT_API__PORT\)"
        ):
            load_config(env={"TILL_AGENT_API__PORT": port})

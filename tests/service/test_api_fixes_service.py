"""``TillService`` in-process: what its log says at start and which units it creates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import AgentConfig
from agent.service import TillService
from e2e.harness import free_port

Start = Callable[..., TillService]


@pytest.fixture(name="start")
def _start(data_dir: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Start]:
    """Start a service on ``data_dir`` (no spool, no printer, API as given); stopped at teardown."""
    started: list[TillService] = []
    caplog.set_level(logging.INFO)

    def start(**settings: Any) -> TillService:
        config = AgentConfig.model_validate(
            {
                "data_dir": data_dir,
                "spool": {"enabled": False},
                "printer": {"kind": "none"},
                "api": {"enabled": False},
                **settings,
            }
        )
        service = TillService(config)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


class TestStartLog:
    def test_a_unix_socket_api_names_its_path(
        self, start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`local API on ...` names the socket, not a placeholder URL, and the API answers."""
        sock = tmp_path / "api.sock"
        till = start(api={"unix_socket": sock})
        [line] = [r.getMessage() for r in caplog.records if "local API on" in r.getMessage()]
        assert line == f"local API on unix socket {sock}"
        token = (till.config.data_dir / "api-token").read_text().strip()
        transport = httpx.HTTPTransport(uds=str(sock))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(transport=transport, base_url="http://till", headers=headers) as client:
            assert client.get("/v1/status").status_code == 200

    def test_a_tcp_api_names_its_url(self, start: Start, caplog: pytest.LogCaptureFixture) -> None:
        """On TCP the line is the base URL (the end-to-end harness reads it from there)."""
        port = free_port()
        start(api={"port": port})
        lines = [r.getMessage() for r in caplog.records if "local API on" in r.getMessage()]
        assert lines == [f"local API on http://127.0.0.1:{port}"]

"""Beyond the API's connection limit: uvicorn refuses the request with a 503 and a log
line, which a client holding connections open must not be able to repeat without end."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from agent import api
from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService

TOKEN = "t" * 32


@pytest.fixture(name="small_server")
def _small_server(service: ReceiptService, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setattr(api, "MAX_CONNECTIONS", 2)
    with serve(create_app(ServiceBackend(service), token=TOKEN), port=0) as server:
        yield server


def _ask(server: ApiServer) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: till\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_requests_beyond_the_limit_get_503_and_one_log_line(
    small_server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    api.OVER_LIMIT_FILTER.reset()
    held = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
            answers = [_ask(small_server) for _ in range(3)]
    finally:
        for sock in held:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers), answers
    lines = [r for r in caplog.records if r.getMessage().startswith(api.OVER_LIMIT)]
    assert len(lines) == 1

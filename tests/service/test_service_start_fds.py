"""The real ``till-agent run`` under a low open-files limit, with real sockets on loopback:
idle and half-sent API connections are closed, the accept error does not flood the log,
and the service answers again; the soft limit is raised to the hard one at start."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

TILL_AGENT = Path(sys.executable).with_name("till-agent")
HALF_SENT = b"POST /v1/receipts HTTP/1.1\r\nHost: till\r\n"  # no blank line: never complete


class Service:
    def __init__(self, tmp_path: Path, nofile: tuple[int, int]) -> None:
        self.data_dir = tmp_path / "data"
        self.log = tmp_path / "service.log"
        env = {
            **os.environ,
            "TILL_AGENT_DATA_DIR": str(self.data_dir),
            "TILL_AGENT_API__PORT": "0",  # the OS picks it: a port picked here could be taken
        }
        env.pop("TILL_AGENT_CONFIG", None)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(TILL_AGENT), "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),  # noqa: PLW1509
            )
        self.wait_for(lambda: "local API on" in self.output(), 60)
        self.url = (self.data_dir / "api-address").read_text(encoding="ascii").strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def status(self) -> int:
        token = (self.data_dir / "api-token").read_text().strip()
        response = httpx.get(
            f"{self.url}/v1/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=2.0,
        )
        return response.status_code

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(name="service")
def _service(tmp_path: Path) -> Iterator[Callable[[tuple[int, int]], Service]]:
    started: list[Service] = []

    def start(nofile: tuple[int, int]) -> Service:
        started.append(Service(tmp_path, nofile))
        return started[-1]

    yield start
    for service in started:
        service.stop()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(service: Callable[..., Service]):
    till = service((256, 4096))
    assert _soft_nofile(till.proc.pid) == 4096
    assert "open files limit raised from 256 to 4096" in till.output()


def test_half_sent_connections_cannot_take_the_api_down(service: Callable[..., Service]):
    """With only 200 descriptors (soft = hard, so it cannot be raised), 400 connections
    that send half a request head: the accept error is logged at most twice, the
    connections are closed after 5 s (agent.api.REQUEST_HEAD_TIMEOUT_S), and the API
    answers again."""
    till = service((200, 200))
    assert till.status() == 200
    held: list[socket.socket] = []
    try:
        for _ in range(400):
            conn = socket.create_connection(("127.0.0.1", till.port), timeout=2)
            conn.sendall(HALF_SENT)
            held.append(conn)
        time.sleep(3)
        assert till.output().count("socket.accept() out of system resource") <= 1
        # the service closes what it accepted; the kernel's backlog is accepted in turn
        deadline = time.monotonic() + 40
        closed = 0
        for conn in held:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                if conn.recv(1) == b"":
                    closed += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert closed >= 150, till.output()[-2000:]
    finally:
        for conn in held:
            conn.close()
    till.wait_for(lambda: _answers(till), 30)
    assert till.proc.poll() is None
    assert till.output().count("socket.accept() out of system resource") <= 2


def _answers(till: Service) -> bool:
    try:
        return till.status() == 200
    except httpx.HTTPError:
        return False

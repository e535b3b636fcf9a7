"""End-to-end helpers: ``till-agent run`` as a real subprocess, a TCP socket that plays the
network printer, a datagram socket that plays systemd's notify socket, a config writer and
a read-only look into the till database.

The fixtures live in ``conftest.py``: every process started through ``launch`` is killed
at teardown if a test left it running, and every socket and thread is closed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from agent.contract import ReceiptResult
from agent.receipt_view import result_from_row

TILL_AGENT = Path(sys.executable).with_name("till-agent")  # the venv's console script
READY_TIMEOUT = 60.0  # seconds: generous for a loaded 2-core machine
_QR_STORE = b"1P0"  # GS ( k: cn=49 (QR), fn=80 (store the data), m=48
_API_URL = re.compile(r"local API on (http://\S+)")
_FOREIGN_ENV = ("TILL_AGENT_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "INVOCATION_ID")


# -- the network printer ------------------------------------------------------------------


def qr_payloads(job: bytes) -> list[str]:
    """The data of every complete native QR 'store' command (``GS ( k pL pH 1 P 0 data``).

    A job cut short by a kill is kept by the printer, but a QR command whose data did not
    arrive completely is not a QR code and is skipped.
    """
    found, start = [], 0
    while (at := job.find(b"\x1d(k", start)) != -1 and at + 5 <= len(job):
        length = job[at + 3] | job[at + 4] << 8
        body = job[at + 5 : at + 5 + length]
        if len(body) == length and body.startswith(_QR_STORE):
            found.append(body[len(_QR_STORE) :].decode("ascii"))
        start = at + 5 + length
    return found


class TcpPrinter:
    """A raw TCP printer on 127.0.0.1: every connection is one job, read until EOF.

    Jobs are kept in the order their connections were accepted, which is the order the
    agent sent them (it sends one job at a time), whichever finished receiving first.

    :meth:`close` stops listening (the printer is switched off: connections are refused)
    and :meth:`open` listens again on the same port, which a socket bound all along (not
    listening) keeps from every other process meanwhile; :meth:`shutdown` lets it go.
    """

    def __init__(self) -> None:
        self._holder = _port_sharing_socket(reuse_address=False)
        self._holder.bind(("127.0.0.1", 0))
        self.port = int(self._holder.getsockname()[1])
        self._jobs: dict[int, bytes] = {}  # accept order -> the bytes received
        self._accepted = 0
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.open()

    def open(self) -> None:
        """Listen (again) on :attr:`port`."""
        assert self._listener is None, "the printer is already listening"
        listener = _port_sharing_socket(reuse_address=True)  # past connections' TIME_WAIT
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self._stop.clear()
        self._start_thread(self._accept, listener)

    def close(self) -> None:
        """Stop listening and wait for the jobs being received."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def shutdown(self) -> None:
        """:meth:`close`, and let the port go."""
        self.close()
        self._holder.close()

    @property
    def jobs(self) -> list[bytes]:
        with self._changed:
            return [self._jobs[n] for n in sorted(self._jobs)]

    def payloads(self) -> list[str]:
        """The QR payloads of every job received so far, in order."""
        return [qr for job in self.jobs for qr in qr_payloads(job)]

    def wait_until(self, predicate: Callable[[list[bytes]], bool], timeout: float) -> bool:
        """Wait until ``predicate(jobs)`` holds; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.jobs), timeout)

    def _start_thread(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="tcp-printer", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            self._start_thread(self._receive, conn, self._accepted)
            self._accepted += 1

    def _receive(self, conn: socket.socket, index: int) -> None:
        chunks: list[bytes] = []
        conn.settimeout(10.0)
        with conn:
            try:
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            except OSError:  # reset by a killed agent: keep what arrived
                pass
        with self._changed:
            self._jobs[index] = b"".join(chunks)
            self._changed.notify_all()


def _port_sharing_socket(*, reuse_address: bool) -> socket.socket:
    """A TCP socket that may bind the port another one of this user holds (SO_REUSEPORT);
    a connection goes to one that listens, and is refused when none does. The holder of a
    port sets no SO_REUSEADDR: with it, any socket asking for that could bind the port too
    while nothing listens on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


# -- systemd's notify socket --------------------------------------------------------------


class NotifySocket:
    """An abstract-namespace datagram socket collecting sd_notify messages.

    Attributes:
        address: the value for ``$NOTIFY_SOCKET`` (``@name``).
        messages: each datagram's ``KEY=VALUE`` lines with its monotonic arrival time.
    """

    def __init__(self) -> None:
        name = f"till-e2e-{os.getpid()}-{secrets.token_hex(6)}"
        self.address = "@" + name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        self._sock.settimeout(0.05)
        self.messages: list[tuple[float, list[str]]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            with self._changed:
                self.messages.append((time.monotonic(), data.decode().split("\n")))
                self._changed.notify_all()

    def datagrams(self) -> list[tuple[float, list[str]]]:
        """A copy of :attr:`messages`."""
        with self._changed:
            return list(self.messages)

    def lines(self) -> list[str]:
        with self._changed:
            return [line for _, lines in self.messages for line in lines]

    def wait_for(self, line: str, timeout: float, count: int = 1) -> bool:
        """Wait until ``count`` lines starting with ``line`` arrived; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(x.startswith(line) for x in self.lines()) >= count, timeout
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


# -- the agent process --------------------------------------------------------------------


def agent_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without anything that configures an agent, with ``HOME`` in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
    for name in ("STATE_DIRECTORY", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        env.pop(name, None)
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.update(extra or {})
    return env


class Process(Protocol):
    """What :class:`Agent` needs of its process (``subprocess.Popen`` or a forked child)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


Spawn = Callable[[list[str], dict[str, str], Path, int], Process]


def popen(args: list[str], env: dict[str, str], cwd: Path, log: int) -> Process:
    """Start ``args`` as a new interpreter, no stdin, stdout and stderr to ``log``."""
    return subprocess.Popen(
        args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )


class Agent:
    """One ``till-agent run`` process: started, told apart by its notify socket, stopped.

    Its stdout and stderr go to ``log`` (a file: a pipe nobody reads would block it);
    :meth:`output` reads what this process appended to it. ``spawn`` starts the process
    (a new interpreter unless a test forks it from a zygote, tests/zygote.py).
    """

    def __init__(
        self, args: list[str], env: dict[str, str], cwd: Path, log: Path, spawn: Spawn = popen
    ) -> None:
        self.notify = NotifySocket()
        self.log = log
        with log.open("ab") as out:
            out.write(f"---- {' '.join(args)}\n".encode())
            out.flush()
            env = {**env, "NOTIFY_SOCKET": self.notify.address}
            self.proc = spawn(args, env, cwd, out.fileno())
        self._log_start = log.stat().st_size

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What this process logged so far."""
        with self.log.open("rb") as handle:
            handle.seek(self._log_start)
            return handle.read().decode(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for ``READY=1``; fail with the log if the process ended or took too long."""
        deadline = time.monotonic() + timeout
        while not self.notify.wait_for("READY=1", 0.05):
            assert self.proc.poll() is None, (
                f"till-agent exited ({self.proc.returncode}) before READY:\n{self.tail()}"
            )
            assert time.monotonic() < deadline, f"no READY after {timeout} s:\n{self.tail()}"

    def api_url(self, timeout: float = READY_TIMEOUT) -> str:
        """The local API's base URL as the agent logged it once listening."""
        deadline = time.monotonic() + timeout
        while (found := _API_URL.search(self.output())) is None:
            assert self.proc.poll() is None, f"till-agent exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"the API never listened:\n{self.tail()}"
            time.sleep(0.02)
        return found.group(1)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (SIGKILL and a failure after ``timeout``)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"till-agent ignored SIGTERM for {timeout} s:\n{self.tail()}")

    def kill(self) -> int:
        """SIGKILL (if still running) and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(30)

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def close(self) -> None:
        self.kill()
        self.notify.close()


class Launch(Protocol):
    """The ``launch`` fixture: start ``till-agent run [--config FILE]``."""

    def __call__(
        self,
        config: Path | None = None,
        *,
        home: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Agent: ...


def launcher(tmp_path: Path, started: list[Agent], spawn: Spawn = popen) -> Launch:
    """The ``launch`` factory; the agents it starts are appended to ``started``."""

    def launch(
        config: Path | None = None,
        *,
        home: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Agent:
        args = [str(TILL_AGENT), "run"] + ([] if config is None else ["--config", str(config)])
        environment = agent_env(home or tmp_path / "home", env)
        log = tmp_path / f"agent-{len(started)}.log"
        agent = Agent(args, environment, cwd or tmp_path, log, spawn)
        started.append(agent)
        return agent

    return launch


# -- configuration and the database -------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` (top-level keys, then one table per dict value) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def agent_config(
    path: Path, data_dir: Path, *, printer_port: int, api_port: int = 0, **tables: dict[str, Any]
) -> Path:
    """A config for tests: data in ``data_dir``, the TCP printer, fast rescans and retries,
    the API on a port the OS picks when it starts (:meth:`Agent.api_url` reads it from
    the log; a port picked here and released would be free only until someone took it).

    ``tables`` are merged into (or added to) the defaults, e.g. ``printer={"retry_s": 5}``.
    """
    settings: dict[str, Any] = {
        "data_dir": data_dir,
        "printer": {
            "kind": "network",
            "host": "127.0.0.1",
            "port": printer_port,
            "timeout_s": 2.0,
            "retry_s": 0.3,
        },
        "api": {"port": api_port},
        "spool": {"rescan_s": 0.2},
        "probe": {"initial_s": 0.5, "max_s": 2.0},
    }
    for name, values in tables.items():
        settings[name] = {**settings.get(name, {}), **values}
    return write_config(path, settings)


@dataclass(frozen=True)
class Stored:
    """A receipt as the till database holds it, with the answer a POS got for it."""

    request_id: str | None
    result: ReceiptResult


def read_receipts(data_dir: Path) -> list[Stored]:
    """Every receipt of the till database in ``data_dir``, in number order (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'till.sqlite3'}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM receipts ORDER BY register_id, number").fetchall()
    finally:
        conn.close()
    return [Stored(row["request_id"], result_from_row(row)) for row in rows]

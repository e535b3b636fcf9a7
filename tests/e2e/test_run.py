"""``till-agent run`` as a real process: a fresh machine, sd_notify, one instance per data
directory, a clean SIGTERM and a network printer that goes away and comes back."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import SYSTEM_CONFIG
from e2e.harness import (
    TILL_AGENT,
    Agent,
    Launch,
    TcpPrinter,
    agent_config,
    agent_env,
    qr_payloads,
    read_receipts,
)
from factories import flat, qr_codes, sale

REGISTER = "KASSE-1"


def drop(inbox: Path, name: str, document: dict[str, Any]) -> None:
    """Hand a sale to the spool the way a POS must: a temporary name, then a rename."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(json.dumps(document).encode())
    os.rename(tmp, inbox / name)


def wait_for_file(path: Path, agent: Agent, timeout: float = 30.0) -> dict[str, Any]:
    """The JSON in ``path`` once the agent wrote it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert agent.proc.poll() is None, f"till-agent exited:\n{agent.tail()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared:\n{agent.tail()}"
        time.sleep(0.02)
    answer: dict[str, Any] = json.loads(path.read_bytes())
    return answer


def client_for(agent: Agent, data_dir: Path) -> httpx.Client:
    """An API client with the bearer token from the agent's token file (once it listens)."""
    url = agent.api_url()
    token = (data_dir / "api-token").read_text(encoding="ascii").strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0)


def wait_until(
    condition: Callable[[], bool], timeout: float, message: str, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(every)


class TestFreshMachine:
    def test_without_any_configuration_it_sells_through_spool_and_api(
        self, launch: Launch, tmp_path: Path
    ) -> None:
        """No file, no TILL_AGENT_* variable: data under ~/.local/share, the development
        unit, KASSE-1 with its Startbeleg, the spool, the API and the file printer work."""
        if SYSTEM_CONFIG.exists():
            pytest.skip(f"{SYSTEM_CONFIG} exists: this machine has a configuration")
        home, cwd = tmp_path / "home", tmp_path / "cwd"
        cwd.mkdir()
        data_dir = home / ".local" / "share" / "till-agent"
        agent = launch(home=home, cwd=cwd)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            assert agent.api_url() == "http://127.0.0.1:8765"
            status = client.get("/v1/status").json()
            assert [r["register"] for r in status["registers"]] == [REGISTER]
            assert status["registers"][0]["last_number"] == 1  # the Startbeleg
            unit = status["registers"][0]["unit"]
            assert (unit["id"], unit["certified"]) == ("dev-uncertified", False)

            drop(data_dir / "spool" / "in", "s-1.json", sale(request_id="s-1"))
            spooled = wait_for_file(data_dir / "spool" / "out" / "s-1.result.json", agent)
            created = client.post("/v1/receipts", json=sale(request_id="a-1"))
            repeated = client.post("/v1/receipts", json=sale(request_id="a-1"))
        assert (spooled["number"], spooled["signature_state"]) == (2, "signed")
        assert created.status_code == 201, created.text
        assert (created.json()["number"], repeated.status_code) == (3, 200)
        assert repeated.json() == created.json()

        prints = data_dir / "prints"
        wait_until(
            lambda: len(list(prints.glob("*.png"))) == 3, 30, f"no previews:\n{agent.tail()}"
        )
        assert agent.terminate() == 0, agent.tail()
        receipts = read_receipts(data_dir)
        for stored, number in zip(receipts, range(1, 4), strict=True):
            assert qr_payloads((prints / f"{number:06d}.bin").read_bytes()) == [stored.result.qr]
            assert qr_codes(prints / f"{number:06d}.png") == [stored.result.qr]
        assert list(cwd.iterdir()) == [], "the agent wrote into its working directory"
        assert "DEVELOPMENT signature unit" in agent.output()

    @pytest.mark.parametrize("key", [b"", b"-----BEGIN PRIVATE KEY-----\n"], ids=["empty", "cut"])
    def test_a_development_unit_half_written_by_a_crash_is_made_again(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter, key: bytes
    ) -> None:
        """A first start killed while writing the development unit's key (no certificate
        yet) must not stop every later start: the unit is not in the database yet, so it
        is made again."""
        data_dir = tmp_path / "data"
        (data_dir / "keys").mkdir(parents=True)
        (data_dir / "keys" / "dev-uncertified.key.pem").write_bytes(key)
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        agent = launch(config)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            response = client.post("/v1/receipts", json=sale(request_id="after-crash"))
        assert response.status_code == 201, response.text
        assert agent.terminate() == 0, agent.tail()
        assert sorted(p.name for p in (data_dir / "keys").iterdir()) == [
            "dev-uncertified.cert.pem",
            "dev-uncertified.key.pem",
        ]


class TestSystemdNotify:
    def test_ready_status_watchdog_and_stopping(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """EXTEND_TIMEOUT_USEC while the database opens, READY=1 once it is migrated, even
        with the printer switched off; then STATUS lines, WATCHDOG=1 every WATCHDOG_USEC/2
        and STOPPING=1 on SIGTERM."""
        printer.close()  # nothing networked is reachable: READY must not wait for it
        config = agent_config(
            tmp_path / "agent.toml",
            tmp_path / "data",
            printer_port=printer.port,
        )
        agent = launch(config, env={"WATCHDOG_USEC": "400000"})  # a ping every 0.2 s
        agent.wait_ready()
        sent = [lines for _, lines in agent.notify.datagrams()]
        ready = next(i for i, lines in enumerate(sent) if "READY=1" in lines)
        assert sent[ready] == ["READY=1", "STATUS=database open and migrated"]
        # the database was opened (quick_check, migrations) with the start timeout extended
        assert ["EXTEND_TIMEOUT_USEC=30000000"] in sent[:ready]
        assert agent.notify.wait_for("WATCHDOG=1", 10, count=5), agent.notify.lines()
        assert agent.notify.wait_for("STATUS=outages open: none", 10, count=3)
        pings = [t for t, lines in agent.notify.datagrams() if lines == ["WATCHDOG=1"]]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0, f"watchdog pings too far apart: {gaps}"
        assert agent.terminate() == 0, agent.tail()
        assert "STOPPING=1" in agent.notify.lines()

    def test_no_watchdog_pings_unless_systemd_asks(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """Without WATCHDOG_USEC the agent sends READY and STATUS, never WATCHDOG=1."""
        config = agent_config(
            tmp_path / "agent.toml",
            tmp_path / "data",
            printer_port=printer.port,
        )
        agent = launch(config)
        agent.wait_ready()
        assert agent.notify.wait_for("STATUS=outages open", 10, count=3)
        assert agent.terminate() == 0, agent.tail()
        assert "WATCHDOG=1" not in agent.notify.lines()


class TestOneInstance:
    def test_a_second_agent_on_the_same_data_directory_fails_fast(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """The second process exits non-zero within seconds naming the lock, never says
        READY, and the first one keeps selling."""
        data_dir = tmp_path / "data"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        first = launch(config)
        first.wait_ready()
        started = time.monotonic()
        second = launch(config)
        status = second.proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        assert status == 5, second.tail()  # the CLI's storage exit code
        message = " ".join(second.output().split())  # Rich wraps lines
        assert f"error: another till-agent process is writing to {data_dir}" in message
        assert elapsed < 10, f"the second agent took {elapsed:.1f} s to give up"
        assert "READY=1" not in second.notify.lines()

        assert first.proc.poll() is None, first.tail()
        assert (data_dir / "api-address").read_text() == f"{first.api_url()}\n"  # untouched
        with client_for(first, data_dir) as client:
            response = client.post("/v1/receipts", json=sale(request_id="after-second"))
        assert response.status_code == 201, response.text
        assert first.terminate() == 0, first.tail()


class _Seller(threading.Thread):
    """Posts sales with fresh request_ids until a request fails to get any answer."""

    def __init__(self, url: str, token: str, prefix: str) -> None:
        super().__init__(name=f"seller-{prefix}", daemon=True)
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0
        )
        self.prefix = prefix
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.stopped_by: Exception | None = None

    def run(self) -> None:
        with self.client:
            for n in range(100_000):
                request_id = f"{self.prefix}-{n}"
                try:
                    response = self.client.post("/v1/receipts", json=sale(request_id=request_id))
                except httpx.TransportError as exc:
                    self.stopped_by = exc
                    return
                self.answers[request_id] = (response.status_code, response.json())


class TestSigterm:
    def test_sigterm_during_a_stream_of_sales_loses_nothing(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """Every sale answered 2xx (API) or with a result file (spool) is in the database
        with the same number, every receipt of a spool sale has its result file, and the
        agent exits 0 within seconds."""
        data_dir = tmp_path / "data"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        agent = launch(config)
        agent.wait_ready()
        url = agent.api_url()
        token = (data_dir / "api-token").read_text(encoding="ascii").strip()
        sellers = [_Seller(url, token, f"api{i}") for i in range(3)]
        for seller in sellers:
            seller.start()
        inbox = data_dir / "spool" / "in"
        for n in range(40):
            drop(inbox, f"s-{n}.json", sale(request_id=f"s-{n}"))
        wait_until(lambda: sum(len(s.answers) for s in sellers) >= 30, 30, "the sales do not flow")
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        status = agent.proc.wait(timeout=30)
        elapsed = time.monotonic() - started
        for seller in sellers:
            seller.join(timeout=30)
            assert not seller.is_alive(), "a seller is still selling to a stopped agent"

        assert status == 0, agent.tail()
        assert elapsed < 8, f"SIGTERM took {elapsed:.1f} s"
        assert "Traceback" not in agent.output(), agent.tail()
        stored = {r.request_id: r.result for r in read_receipts(data_dir) if r.request_id}
        answered = {k: v for s in sellers for k, v in s.answers.items()}
        assert answered, "no sale was answered"
        for request_id, (code, body) in answered.items():
            assert code == 201, f"{request_id}: {code} {body}"
            assert stored[request_id].number == body["number"], request_id
            assert stored[request_id].jws == body["jws"], request_id
        out = data_dir / "spool" / "out"
        for request_id, result in stored.items():
            if request_id.startswith("s-"):
                answer = json.loads((out / f"{request_id}.result.json").read_bytes())
                assert answer["number"] == result.number, request_id


class TestNetworkPrinter:
    def test_one_job_per_receipt_carrying_its_qr_code(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """Each receipt (the Startbeleg too) arrives once on the TCP printer, in number
        order, and the QR data in the bytes is exactly the receipt's ``qr``."""
        data_dir = tmp_path / "data"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        agent = launch(config)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            for n in range(3):
                response = client.post("/v1/receipts", json=sale(request_id=f"p-{n}"))
                assert response.status_code == 201, response.text
        assert printer.wait_until(lambda jobs: len(jobs) >= 4, 30), agent.tail()
        time.sleep(0.5)  # a duplicate would arrive now
        assert agent.terminate() == 0, agent.tail()
        receipts = read_receipts(data_dir)
        assert [qr_payloads(job) for job in printer.jobs] == [[r.result.qr] for r in receipts]

    def test_receipts_go_on_while_the_printer_is_off_and_print_when_it_is_back(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """With the printer gone sales are still answered at once and the status (API and
        sd_notify) says offline; once it listens again the backlog is printed in order."""
        data_dir = tmp_path / "data"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        agent = launch(config)
        agent.wait_ready()
        assert printer.wait_until(lambda jobs: len(jobs) == 1, 30), agent.tail()
        printer.close()
        with client_for(agent, data_dir) as client:
            for n in range(3):
                started = time.monotonic()
                response = client.post("/v1/receipts", json=sale(request_id=f"off-{n}"))
                assert response.status_code == 201, response.text
                assert time.monotonic() - started < 2.0, "a sale waited for the printer"
            wait_until(
                lambda: client.get("/v1/status").json()["printer"]["state"] == "offline",
                10,
                "the status never showed the printer offline",
            )
            offline = client.get("/v1/status").json()["printer"]
            assert offline["queued"] >= 1, offline
            assert offline["last_error"], offline
            assert agent.notify.wait_for("STATUS=outages open: none; printer: offline", 10)

            printer.open()
            assert printer.wait_until(lambda jobs: len(jobs) >= 4, 30), agent.tail()
            wait_until(
                lambda: (
                    client.get("/v1/status").json()["printer"]
                    == {"state": "ready", "queued": 0, "last_error": None}
                ),
                10,
                "the printer did not come back in the status",
            )
        assert agent.terminate() == 0, agent.tail()
        receipts = read_receipts(data_dir)
        assert printer.payloads() == [r.result.qr for r in receipts]

    def test_a_startbeleg_whose_run_was_killed_before_printing_is_printed_next_time(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """SIGKILL on the first start right after the Startbeleg's commit (before the print
        worker made its job): the next run prints it."""
        data_dir = tmp_path / "data"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        first = launch(config)
        first.wait_ready()
        wait_until(lambda: "initialized (Startbeleg 1)" in first.output(), 30, first.tail(), 0)
        assert first.kill() == -signal.SIGKILL
        second = launch(config)
        second.wait_ready()
        assert printer.wait_until(lambda jobs: len(jobs) >= 1, 30), second.tail()
        assert second.terminate() == 0, second.tail()
        assert printer.payloads() == [read_receipts(data_dir)[0].result.qr]


def _reprint(config: Path, number: int, home: Path) -> dict[str, Any]:
    """``till-agent reprint KASSE-1 NUMBER --config CONFIG --json`` as its own process."""
    done = subprocess.run(
        [str(TILL_AGENT), "reprint", REGISTER, str(number), "--config", str(config), "--json"],
        env=agent_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


class TestApiPortZero:
    def test_the_port_the_os_picked_is_named_and_the_cli_finds_it(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """``[api] port = 0``: the log, the STATUS= line and ``api-address`` name the same
        real port, where ``reprint --config`` reaches the service; a SIGKILL leaves the
        file, the next start names its own port there, and SIGTERM removes it."""
        data_dir, home = tmp_path / "data", tmp_path / "home"
        address = data_dir / "api-address"
        config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
        assert "port = 0" in config.read_text()
        first = launch(config)
        first.wait_ready()
        url = first.api_url()
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", url), url
        assert f"local API on {url} (api.port = 0: the port the OS picked)" in first.output()
        assert address.read_text() == f"{url}\n"
        wait_until(
            lambda: any(
                line.startswith("STATUS=") and line.endswith(f"; API: {url}")
                for line in first.notify.lines()
            ),
            10,
            f"no STATUS= line names the API: {first.notify.lines()}",
        )
        assert _reprint(config, 1, home)["copy"] == 1
        assert printer.wait_until(lambda jobs: any(b"KOPIE" in job for job in jobs), 30)
        assert first.kill() == -signal.SIGKILL
        assert address.read_text() == f"{url}\n"  # a port nobody listens on now

        second = launch(config)
        second.wait_ready()
        again = second.api_url()  # logged once the file names it
        assert address.read_text() == f"{again}\n"
        assert _reprint(config, 1, home)["copy"] == 2
        assert second.terminate() == 0, second.tail()
        assert not address.exists()

    def test_a_configured_port_in_use_stops_the_start_naming_it(
        self, launch: Launch, tmp_path: Path, printer: TcpPrinter
    ) -> None:
        """Someone listens on the configured port (this test, all along): exit 2 (a
        configuration error) naming host and port, and no ``api-address`` left behind."""
        data_dir = tmp_path / "data"
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = int(taken.getsockname()[1])
            config = agent_config(
                tmp_path / "agent.toml", data_dir, printer_port=printer.port, api_port=port
            )
            agent = launch(config)
            status = agent.proc.wait(timeout=60)
        assert status == 2, agent.tail()
        assert f"error: cannot listen on 127.0.0.1:{port}: " in flat(agent.output())
        assert not (data_dir / "api-address").exists()

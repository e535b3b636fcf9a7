"""``till-agent bench ingest``: sales into a real ``till-agent run`` process, both ways in.

The benchmark starts the service as a subprocess on a temporary data directory (the
development unit, no printer, the local API on a free loopback port, a short spool
rescan), waits until the API answers, then

1. spool: writes ``n`` sale files into ``spool/in/`` the way a POS must (a temporary
   name, then a rename) and waits until each has its answer in ``out/`` or ``failed/``;
2. API: sends ``n`` sales as ``POST /v1/receipts`` from ``clients`` threads (the service
   shares commits between concurrent sales), timing each request;

and stops the service with SIGTERM, as systemd would. Like every benchmark it is a
command, never a timed test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.errors import TillAgentError

__all__ = ["IngestBench", "bench_ingest"]

Progress = Callable[[str, int], None]  # (phase, sales answered since the last call)
REGISTER = "BENCH-1"
_STALL_S = 60.0  # no answer for this long: the rest of the spool counts as failed
_SALE = (
    '{"request_id":"%s","register":"BENCH-1","kind":"standard",'
    '"lines":[{"text":"Melange","qty":"1","unit_price":"4.20","vat":"reduced1"},'
    '{"text":"Croissant","qty":"1","unit_price":"2.90","vat":"normal"}],'
    '"payments":[{"method":"cash","amount":"7.10"}]}'
)


@dataclass(frozen=True, slots=True)
class IngestBench:
    n: int
    clients: int
    spool_per_s: float
    spool_failed: int
    api_per_s: float
    api_p50_ms: float
    api_p99_ms: float
    api_failed: int
    service_exit: int | None  # the service's exit status after SIGTERM (0: clean)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sale(request_id: str) -> bytes:
    return (_SALE % request_id).encode()


def _quantile(samples: list[float], q: float) -> float:
    """The sample below which a share ``q`` of the samples lie (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(tmp: Path, port: int) -> Path:
    config = tmp / "till-agent.toml"
    config.write_text(
        f"data_dir = {json.dumps(str(tmp / 'data'))}\n"  # a JSON string is a TOML string
        f'[register]\nid = "{REGISTER}"\n'
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n'
        "[spool]\nrescan_s = 0.2\n"
        '[printer]\nkind = "none"\n',
        encoding="utf-8",
    )
    return config


def _child_env() -> dict[str, str]:
    """Our environment without TILL_AGENT_* overrides and without a systemd notify socket."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TILL_AGENT_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
    }


class _Service:
    """A ``till-agent run`` subprocess and the way to talk to it."""

    def __init__(self, tmp: Path, startup_timeout: float) -> None:
        self.data = tmp / "data"
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / "service.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(_write_config(tmp, port))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
            )
        try:
            self.token = self._wait_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> str:
        """Poll ``GET /v1/status`` with the token the service writes; return the token."""
        deadline = time.monotonic() + timeout
        token_file = self.data / "api-token"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TillAgentError(f"the service exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, httpx.HTTPError):
                token = token_file.read_text(encoding="ascii").strip()
                headers = {"Authorization": f"Bearer {token}"}
                if httpx.get(f"{self.url}/v1/status", headers=headers, timeout=1.0).is_success:
                    return token
            time.sleep(0.1)
        raise TillAgentError(
            f"the service was not ready within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> int | None:
        """SIGTERM, then wait; a service that does not stop in 30 s is killed (``None``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _count(directory: Path, suffix: str) -> int:
    with os.scandir(directory) as entries:
        return sum(1 for e in entries if e.name.endswith(suffix))


def _spool_phase(spool: Path, n: int, progress: Progress) -> tuple[float, int]:
    """Drop ``n`` sales into the spool; return (sales per second, sales not answered OK)."""
    inbox, out, failed = spool / "in", spool / "out", spool / "failed"
    start = time.perf_counter()
    for i in range(n):
        name = f"spool-{i:06d}"
        tmp = inbox / f".{name}.tmp"
        # no fsync: the POS's own crash safety is not what is measured here
        tmp.write_bytes(_sale(name))
        os.rename(tmp, inbox / f"{name}.json")
    done = last_seen = 0
    last_change = time.monotonic()
    while done < n and time.monotonic() - last_change < _STALL_S:
        time.sleep(0.05)
        done = _count(out, ".result.json") + _count(failed, ".error.json")
        if done != last_seen:
            progress("spool", done - last_seen)
            last_seen, last_change = done, time.monotonic()
    elapsed = time.perf_counter() - start
    answered = _count(out, ".result.json")
    return answered / elapsed, n - answered


def _api_phase(
    url: str, token: str, n: int, clients: int, progress: Progress
) -> tuple[float, list[float], int]:
    """``n`` POSTs from ``clients`` threads; return (per second, latencies, failures)."""
    numbers = itertools.count()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def client_loop() -> tuple[list[float], int]:
        samples: list[float] = []
        failed = 0
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
            while True:
                with lock:
                    i = next(numbers)
                if i >= n:
                    return samples, failed
                t0 = time.perf_counter()
                try:
                    ok = client.post("/v1/receipts", content=_sale(f"api-{i:06d}")).status_code
                except httpx.HTTPError:
                    ok = 0
                samples.append(time.perf_counter() - t0)
                failed += ok != 201
                progress("api", 1)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client_loop(), range(clients)))
    elapsed = time.perf_counter() - start
    samples = [s for part, _ in results for s in part]
    return n / elapsed, samples, sum(f for _, f in results)


def bench_ingest(
    n: int = 2000,
    *,
    clients: int = 4,
    progress: Progress | None = None,
    startup_timeout: float = 60.0,
) -> IngestBench:
    """Push ``n`` sales through the spool, then ``n`` through the API of a running service.

    Raises:
        TillAgentError: the service did not start (its log tail is in the message).
    """
    report = progress or (lambda _phase, _k: None)
    with tempfile.TemporaryDirectory(prefix="till-bench-ingest-") as tmp:
        service = _Service(Path(tmp), startup_timeout)
        try:
            spool_rate, spool_failed = _spool_phase(service.data / "spool", n, report)
            api = _api_phase(service.url, service.token, n, clients, report)
        finally:
            exit_status = service.stop()
    api_rate, samples, api_failed = api
    return IngestBench(
        n=n,
        clients=clients,
        spool_per_s=round(spool_rate, 1),
        spool_failed=spool_failed,
        api_per_s=round(api_rate, 1),
        api_p50_ms=round(_quantile(samples, 0.5) * 1000, 3),
        api_p99_ms=round(_quantile(samples, 0.99) * 1000, 3),
        api_failed=api_failed,
        service_exit=exit_status,
    )

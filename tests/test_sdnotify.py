"""sd_notify against real AF_UNIX datagram sockets (path and abstract), the watchdog
interval from the environment, and a Watchdog that stops pinging when a loop stalls."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify
from agent.sdnotify import Watchdog


class Receiver:
    """The systemd side: a bound datagram socket that collects messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def next(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every message waiting now."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture(name="receiver")
def _receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """NOTIFY_SOCKET names a socket in a short temporary directory (paths max 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        path = str(Path(folder) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            yield Receiver(sock)


@pytest.fixture(name="not_under_systemd", autouse=True)
def _not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


class TestNotify:
    def test_outside_systemd_nothing_is_sent(self) -> None:
        """Without NOTIFY_SOCKET every helper is a no-op returning False."""
        assert not sdnotify.notify("READY=1")
        assert not sdnotify.ready()
        assert not sdnotify.watchdog_ping()

    def test_ready_status_watchdog_stopping(self, receiver: Receiver) -> None:
        """Each helper sends its assignment as one datagram."""
        assert sdnotify.ready()
        assert receiver.next() == "READY=1"
        assert sdnotify.status("outbox=12 online=no")
        assert receiver.next() == "STATUS=outbox=12 online=no"
        assert sdnotify.watchdog_ping()
        assert receiver.next() == "WATCHDOG=1"
        assert sdnotify.extend_timeout(1.5)
        assert receiver.next() == "EXTEND_TIMEOUT_USEC=1500000"
        assert sdnotify.stopping()
        assert receiver.next() == "STOPPING=1"

    def test_extending_asks_for_more_time_while_the_block_runs(self, receiver: Receiver) -> None:
        """At once, then every ``every`` seconds, and nothing once the block is done."""
        with sdnotify.extending(every=0.05, by=30.0):
            time.sleep(0.18)
        sent = receiver.drain()
        assert len(sent) >= 3
        assert set(sent) == {"EXTEND_TIMEOUT_USEC=30000000"}
        time.sleep(0.15)
        assert receiver.drain() == []

    def test_extending_outside_systemd_starts_no_thread(self) -> None:
        before = threading.active_count()
        with sdnotify.extending(every=0.01):
            assert threading.active_count() == before

    def test_several_states_in_one_datagram(self, receiver: Receiver) -> None:
        """READY with a status is one message of newline-separated assignments."""
        assert sdnotify.ready("db open, outbox=0")
        assert receiver.next() == "READY=1\nSTATUS=db open, outbox=0"

    def test_a_status_stays_on_one_line(self, receiver: Receiver) -> None:
        """A newline in the text cannot inject another assignment."""
        sdnotify.status("ok\nWATCHDOG=trigger")
        assert receiver.next() == "STATUS=ok WATCHDOG=trigger"

    def test_abstract_namespace(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A leading '@' names a Linux abstract socket."""
        name = f"till-agent-test-{os.getpid()}-{secrets.token_hex(4)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            assert sdnotify.ready()
            sock.settimeout(2)
            assert sock.recv(100) == b"READY=1"

    def test_a_vanished_socket_is_logged_not_raised(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A lost notification never stops the till."""
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
        with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
            assert not sdnotify.watchdog_ping()
        assert "sd_notify" in caplog.text

    def test_a_relative_path_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """systemd only hands out absolute or abstract addresses."""
        monkeypatch.setenv("NOTIFY_SOCKET", "notify.sock")
        assert not sdnotify.notify("READY=1")


class TestWatchdogInterval:
    @pytest.mark.parametrize(
        ("usec", "pid", "expected"),
        [
            ("30000000", None, 15.0),
            ("30000000", "own", 15.0),
            ("30000000", "1", None),
            (None, None, None),
            ("0", None, None),
            ("soon", None, None),
        ],
    )
    def test_half_of_watchdog_usec_for_this_process(
        self, usec: str | None, pid: str | None, expected: float | None
    ) -> None:
        """Ping every WatchdogSec/2, and only if WATCHDOG_PID is unset or ours."""
        env = {} if usec is None else {"WATCHDOG_USEC": usec}
        if pid is not None:
            env["WATCHDOG_PID"] = str(os.getpid()) if pid == "own" else pid
        assert sdnotify.watchdog_interval(env) == expected

    def test_read_from_the_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without an argument the real environment counts."""
        monkeypatch.setenv("WATCHDOG_USEC", "4000000")
        assert sdnotify.watchdog_interval() == 2.0
        assert Watchdog().interval == 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestWatchdogDecision:
    @pytest.fixture(name="clock")
    def _clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture(name="pings")
    def _pings(self) -> list[float]:
        return []

    @pytest.fixture(name="watchdog")
    def _watchdog(self, clock: FakeClock, pings: list[float]) -> Watchdog:
        def ping() -> bool:
            pings.append(clock.now)
            return True

        watchdog = Watchdog(10.0, ping=ping, clock=clock)
        watchdog.register("sync", 30.0)
        watchdog.register("spool", 5.0)
        return watchdog

    def test_pings_while_every_loop_beats(
        self, watchdog: Watchdog, clock: FakeClock, pings: list[float]
    ) -> None:
        """Fresh heartbeats: a ping on every check."""
        for _ in range(3):
            clock.now += 4
            watchdog.beat("spool")
            assert watchdog.check()
        assert pings == [104.0, 108.0, 112.0]

    def test_one_stalled_loop_withholds_the_ping(
        self,
        watchdog: Watchdog,
        clock: FakeClock,
        pings: list[float],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A loop silent past its limit stops the pings, logged once; a beat resumes them."""
        clock.now += 6
        with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
            assert watchdog.stalled() == ["spool"]
            assert not watchdog.check()
            assert not watchdog.check()
            watchdog.beat("spool")
            assert watchdog.check()
        assert pings == [106.0]
        assert [r.getMessage() for r in caplog.records] == [
            "loop spool stalled: withholding the watchdog ping",
            "loop spool is making progress again",
        ]

    def test_an_unregistered_loop_no_longer_counts(
        self, watchdog: Watchdog, clock: FakeClock
    ) -> None:
        """A loop that ended on purpose is taken off the list."""
        clock.now += 6
        watchdog.unregister("spool")
        assert watchdog.check()

    def test_beating_an_unknown_loop_is_a_bug(self, watchdog: Watchdog) -> None:
        """A typo in a loop name must not pass silently."""
        with pytest.raises(KeyError, match="sink"):
            watchdog.beat("sink")

    def test_no_loops_means_the_process_is_alive(self, clock: FakeClock) -> None:
        """Nothing registered yet: the pinger itself is the progress."""
        assert Watchdog(1.0, ping=lambda: True, clock=clock).check()

    def test_limits_must_be_positive(self, watchdog: Watchdog) -> None:
        with pytest.raises(ValueError, match="positive"):
            watchdog.register("x", 0)

    def test_without_an_interval_start_does_nothing(self) -> None:
        """Outside systemd (no WATCHDOG_USEC) no thread is started."""
        watchdog = Watchdog()
        watchdog.start()
        assert watchdog.interval is None
        assert not any(t.name == "sd-watchdog" for t in threading.enumerate())
        watchdog.stop()


class TestWatchdogThread:
    def test_pings_reach_systemd_until_a_loop_stalls(self, receiver: Receiver) -> None:
        """Real socket, real threads: WATCHDOG=1 flows while the loop beats, then stops."""
        stop_beating = threading.Event()
        with Watchdog(0.02) as watchdog:
            watchdog.register("work", 0.2)

            def loop() -> None:
                while not stop_beating.wait(0.01):
                    watchdog.beat("work")

            worker = threading.Thread(target=loop)
            worker.start()
            try:
                assert [receiver.next() for _ in range(3)] == ["WATCHDOG=1"] * 3
            finally:
                stop_beating.set()
                worker.join()
            time.sleep(0.4)  # past the loop's 0.2 s allowance
            receiver.drain()
            time.sleep(0.2)
            assert receiver.drain() == []
            assert watchdog.stalled() == ["work"]
        assert not any(t.name == "sd-watchdog" for t in threading.enumerate())

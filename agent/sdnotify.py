"""sd_notify without a dependency, and a watchdog that pings only while the work goes on.

The protocol (sd_notify(3)): one ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated
``KEY=VALUE`` lines to the socket named in ``$NOTIFY_SOCKET``; a leading ``@`` names the
Linux abstract namespace. Outside systemd the variable is unset and every call is a no-op
that returns False.

``READY=1`` goes out once the database is open and migrated, never after the network:
the till sells offline. ``WATCHDOG=1`` goes out only through :class:`Watchdog`, which
sends it while every registered loop keeps beating; a blind timer would defeat it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType

__all__ = [
    "Watchdog",
    "extend_timeout",
    "extending",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_ping",
]

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``KEY=VALUE`` states to systemd in one datagram.

    Returns:
        True if sent; False when not started by systemd or when sending failed (logged:
        a lost notification must never stop the till).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send("\n".join(states).encode())
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def ready(text: str | None = None) -> bool:
    """Tell systemd the service is up (optionally with a status line)."""
    return notify("READY=1", *([] if text is None else [_status(text)]))


def status(text: str) -> bool:
    """Set the line ``systemctl status`` shows, e.g. ``outbox=12 online=no``."""
    return notify(_status(text))


def stopping() -> bool:
    """Tell systemd a graceful shutdown has begun."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    """Send one ``WATCHDOG=1``; normally :class:`Watchdog` decides when."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before systemd gives up on start-up or shutdown (migrations)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


@contextmanager
def extending(every: float = 10.0, by: float = 30.0) -> Iterator[None]:
    """While the block runs, ask systemd for ``by`` seconds more every ``every`` seconds
    (at once on entry): a long ``quick_check`` or migration of a big database on an SD
    card is not killed by ``TimeoutStartSec=`` while it makes its way. Outside systemd
    nothing is sent and no thread runs."""
    if not extend_timeout(by):
        yield
        return
    done = threading.Event()

    def keep_extending() -> None:
        while not done.wait(every):
            extend_timeout(by)

    thread = threading.Thread(target=keep_extending, name="sd-extend", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec=``), or None when disabled.

    Disabled when ``WATCHDOG_USEC`` is unset or invalid, or when ``WATCHDOG_PID`` names
    another process (sd_watchdog_enabled(3)).
    """
    env = os.environ if env is None else env
    pid, usec = env.get("WATCHDOG_PID"), env.get("WATCHDOG_USEC", "")
    if pid and pid != str(os.getpid()):
        return None
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 2_000_000


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())


class Watchdog:
    """Pings the systemd watchdog only while every registered loop makes progress.

    Each loop calls :meth:`register` once with the longest silence it may keep (its own
    wait timeout plus the slowest piece of work), then :meth:`beat` every turn. A pinger
    thread wakes every ``interval`` seconds and sends ``WATCHDOG=1`` only if no loop is
    stalled; with no loop registered it pings (the process itself is alive). Times come
    from the monotonic clock.

    Args:
        interval: seconds between checks; None reads :func:`watchdog_interval`, and with
            no watchdog configured :meth:`start` does nothing.
        ping: sends one ping (tests pass a recorder).
        clock: the monotonic clock.
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        ping: Callable[[], bool] = watchdog_ping,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = watchdog_interval() if interval is None else interval
        self._ping = ping
        self._clock = clock
        self._lock = threading.Lock()
        self._loops: dict[str, tuple[float, float]] = {}  # name -> (max silence, last beat)
        self._stalled: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, name: str, max_silence: float) -> None:
        """Watch loop ``name``; it counts as having beaten now."""
        if max_silence <= 0:
            raise ValueError("max_silence must be positive")
        with self._lock:
            self._loops[name] = (max_silence, self._clock())

    def limits(self) -> dict[str, float]:
        """The longest silence each watched loop may keep, in seconds."""
        with self._lock:
            return {name: limit for name, (limit, _) in self._loops.items()}

    def unregister(self, name: str) -> None:
        """Stop watching ``name`` (the loop ended on purpose)."""
        with self._lock:
            self._loops.pop(name, None)
            self._stalled.discard(name)

    def beat(self, name: str) -> None:
        """Record that loop ``name`` made progress.

        Raises:
            KeyError: ``name`` was never registered (a programming error).
        """
        with self._lock:
            if name not in self._loops:
                raise KeyError(f"loop {name!r} is not registered with the watchdog")
            self._loops[name] = (self._loops[name][0], self._clock())

    def stalled(self) -> list[str]:
        """The loops silent for longer than they may be, sorted by name."""
        with self._lock:
            return sorted(self._silent())

    def check(self) -> bool:
        """Ping if no loop is stalled; return whether a ping was sent."""
        with self._lock:
            stalled = self._silent()
            news, back = stalled - self._stalled, self._stalled - stalled
            self._stalled = stalled
        for name in sorted(news):
            log.error("loop %s stalled: withholding the watchdog ping", name)
        for name in sorted(back):
            log.warning("loop %s is making progress again", name)
        return not stalled and self._ping()

    def _silent(self) -> set[str]:
        now = self._clock()
        return {name for name, (limit, last) in self._loops.items() if now - last > limit}

    def start(self) -> None:
        """Start the pinger thread (no-op without a watchdog interval, or if running)."""
        if not self.interval or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(self.interval,), name="sd-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the pinger thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, interval: float) -> None:
        self.check()
        while not self._stop.wait(interval):
            self.check()

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

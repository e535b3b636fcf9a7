"""A background loop on the monotonic clock: the shape of the probe and the printer."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable

from agent.errors import StorageError

__all__ = ["BackgroundLoop"]

log = logging.getLogger(__name__)

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}


def _expected(exc: Exception) -> bool:
    """A failure of the till's storage (the database, a full disk): it says what failed,
    and its traceback would say nothing more."""
    return isinstance(exc, StorageError) or (isinstance(exc, OSError) and exc.errno in _NO_ROOM)


class BackgroundLoop:
    """Calls ``step`` on a daemon thread until stopped; a step that raises is retried after
    ``error_wait`` seconds, so the loop never dies. A run of failures is logged once, at
    ERROR with its traceback (the retries at DEBUG), and its end at INFO; a storage
    failure (the database, a full disk) is one line without a traceback.

    ``step`` returns how long to wait before the next step (at most ``max_wait``);
    :meth:`wake` ends the wait early.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], float],
        *,
        max_wait: float = 1.0,
        error_wait: float = 1.0,
    ) -> None:
        self.name = name
        self._step = step
        self.max_wait = max_wait
        self.error_wait = error_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                wait = self._step()
            except Exception as exc:
                if failing:
                    trace = None if _expected(exc) else exc
                    log.debug("%s loop failed again: %s", self.name, exc, exc_info=trace)
                elif _expected(exc):
                    log.error(
                        "%s loop failed: %s; retrying every %g s (logged again once it has"
                        " recovered)",
                        self.name,
                        exc,
                        self.error_wait,
                    )
                else:
                    log.exception(
                        "%s loop failed; retrying every %g s (logged again once it has recovered)",
                        self.name,
                        self.error_wait,
                    )
                failing, wait = True, self.error_wait
            else:
                if failing:
                    log.info("%s loop recovered", self.name)
                failing = False
            self._wake.wait(timeout=max(0.01, min(wait, self.max_wait)))
            self._wake.clear()

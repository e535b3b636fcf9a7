"""A log filter letting one kind of message through at most once a minute: for messages a
misbehaving peer or a resource shortage can repeat as fast as it likes."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedFilter"]


class RateLimitedFilter(logging.Filter):
    """Let records whose message starts with ``prefix`` through once per ``every_s``
    seconds, with the count of the ones left out; other records pass. A flood of log lines
    makes a shortage worse (reported: 162 MB in 8 s) and lets a client fill the disk."""

    def __init__(self, prefix: str, every_s: float = 60.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_s = every_s
        self.reset()

    def reset(self) -> None:
        """Forget what was let through (the next matching record passes)."""
        self._next = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return False
        if self._suppressed:
            record.msg = f"{record.msg} ({self._suppressed} more since the last report)"
        self._next, self._suppressed = now + self.every_s, 0
        record.exc_info = record.exc_text = None  # the same error every time
        return True

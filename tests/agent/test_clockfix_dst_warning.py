"""The October fall-back repeats an hour of local time without the clock going back: the
watch compares instants, so it does not log that the clock is behind a receipt issued in
the first pass of that hour; a clock really set back is still logged."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from agent.clock import FrozenClock
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from factories import sale

BEHIND = "behind its last receipt date"
CAUGHT_UP = "has caught up"


@pytest.fixture(name="clock")
def _clock() -> FrozenClock:
    """02:40 CEST on 25 October 2026, twenty minutes before Vienna falls back to CET."""
    return FrozenClock(dt.datetime(2026, 10, 25, 0, 40, tzinfo=dt.UTC))


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


class TestFallBack:
    def test_the_repeated_hour_is_no_clock_behind(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A receipt at 02:50 CEST, then ticks at 02:10, 02:30 and 02:50 CET (an hour later
        in real time, each): nothing is logged about the clock."""
        caplog.set_level(logging.INFO)
        watch.tick()
        clock.advance(600)
        assert service.issue(sale(request_id="a")).issued_at == "2026-10-25T02:50:00"
        for _ in range(3):
            clock.advance(1200)
            watch.tick()
        assert _messages(caplog, BEHIND) == []
        assert _messages(caplog, CAUGHT_UP) == []

    def test_a_clock_set_back_in_that_night_is_still_logged(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        watch: OutageWatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The same receipt at 02:50 CEST, then the clock set back 2 h (01:00 CEST): the
        clock is behind, logged once with both dates, and caught up once it is past 02:50
        CEST again."""
        caplog.set_level(logging.INFO)
        watch.tick()
        clock.advance(600)
        service.issue(sale(request_id="a"))
        clock.jump(-2 * 3600)
        watch.tick()
        watch.tick()
        [line] = _messages(caplog, BEHIND)
        assert "(2026-10-25T00:50:00)" in line
        assert "(2026-10-25T02:50:00)" in line
        clock.advance(2 * 3600 + 60)
        watch.tick()
        assert len(_messages(caplog, CAUGHT_UP)) == 1

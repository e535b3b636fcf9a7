"""``GET /v1/status``: an open outage's ``deadline_48h_at`` follows from the age it shows
(the boot clock's, as the alerts'), not from ``started_at``: after NTP stepped the wall
clock, the operator is told the hours that are really left; past the window, it is the
moment the window closed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.api import create_app, serve
from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import sale

TOKEN = "t" * 32
HOUR = 3600.0


@pytest.fixture(name="client")
def _client(service: ReceiptService) -> Iterator[httpx.Client]:
    """The local API of ``service`` on loopback."""
    with (
        serve(create_app(ServiceBackend(service), token=TOKEN), port=0) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        ) as client,
    ):
        yield client


def _outage(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/status")
    assert response.status_code == 200
    outage: dict[str, Any] = response.json()["registers"][0]["open_outage"]
    return outage


def _left(outage: dict[str, Any], clock: FrozenClock) -> float:
    """The hours from now to ``deadline_48h_at``."""
    deadline = dt.datetime.fromisoformat(outage["deadline_48h_at"])
    return (deadline - clock.now()).total_seconds() / HOUR


def _hours(service: ReceiptService, clock: FrozenClock, hours: int) -> None:
    for _ in range(hours):
        clock.advance(HOUR)
        service.outages.watch.tick()


class TestDeadlineAfterAStep:
    def test_a_clock_that_was_behind_leaves_the_hours_that_are_left(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, client: httpx.Client
    ) -> None:
        """The outage opens with the wall clock 24 h behind; NTP steps it +24 h a minute
        later; 30 h on, the outage is 30 h old and its window closes in 18 h (not 6 h ago,
        as started_at + 48 h would say)."""
        service.outages.watch.tick()
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        service.outages.watch.tick()
        clock.advance(60)
        clock.jump(24 * HOUR)
        service.outages.watch.tick()
        _hours(service, clock, 30)
        outage = _outage(client)
        assert outage["age_s"] / HOUR == pytest.approx(30 + 1 / 60)
        assert _left(outage, clock) == pytest.approx(18 - 1 / 60)

    def test_a_clock_that_was_ahead_does_not_give_a_day_too_many(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, client: httpx.Client
    ) -> None:
        """The outage opens with the wall clock 24 h ahead, NTP steps it back; 47 h on, one
        hour is left (started_at + 48 h would say 25)."""
        service.outages.watch.tick()
        clock.jump(24 * HOUR)
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        service.outages.watch.tick()
        clock.advance(60)
        clock.jump(-24 * HOUR)
        service.outages.watch.tick()
        _hours(service, clock, 47)
        outage = _outage(client)
        assert outage["age_s"] / HOUR == pytest.approx(47 + 1 / 60)
        assert _left(outage, clock) == pytest.approx(1 - 1 / 60)


class TestDeadlinePassed:
    def test_past_the_window_it_is_the_moment_the_window_closed(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, client: httpx.Client
    ) -> None:
        """50 h into an outage that opened with the clock 24 h behind (stepped right): the
        deadline is 2 h ago, a week before the report is due, and stays there as time
        passes."""
        service.outages.watch.tick()
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        service.outages.watch.tick()
        clock.advance(60)
        clock.jump(24 * HOUR)
        service.outages.watch.tick()
        _hours(service, clock, 50)
        outage = _outage(client)
        assert _left(outage, clock) == pytest.approx(-2 - 1 / 60)
        report_due = dt.datetime.fromisoformat(outage["report_due_at"])
        deadline = dt.datetime.fromisoformat(outage["deadline_48h_at"])
        assert report_due - deadline == dt.timedelta(days=7)
        clock.advance(HOUR / 2)  # no tick: the age shown adds the time since the last one
        assert _outage(client)["deadline_48h_at"] == outage["deadline_48h_at"]

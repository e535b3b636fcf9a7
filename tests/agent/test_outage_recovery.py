"""A unit that answers its probe but cannot sign: the outage stays open, and why is
journaled (once per reason per outage), logged and shown in the status."""

from __future__ import annotations

import logging

import pytest

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.probe import Prober
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import journal_events, sale

REGISTER = "KASSE-1"


def _probe_for(seconds: int, clock: FrozenClock, prober: Prober) -> None:
    for _ in range(seconds):
        clock.advance(1)
        prober.run_once()


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "recovery failed" in r.getMessage()]


class TestRecoveryFailed:
    def test_a_unit_signing_garbage_is_journaled_and_logged_once(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        prober: Prober,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Ten minutes of probes that answer while the Sammelbeleg fails: one event, one
        WARNING, each naming the invalid signature; the outage stays open."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        flaky.mode = "garbage"
        caplog.set_level(logging.WARNING)
        _probe_for(600, clock, prober)
        assert service.outages.is_open(REGISTER)
        [event] = journal_events(service.db, "outage.recovery_failed")
        assert event["outage"] == 1
        assert "signature" in str(event["reason"]).lower()
        [line] = _failures(caplog)
        assert str(event["reason"]) in line
        assert caplog.records[-1].levelno == logging.WARNING

    def test_an_answering_unit_that_cannot_sign_backs_off(
        self, service: ReceiptService, flaky: FlakyUnit, clock: FrozenClock, prober: Prober
    ) -> None:
        """It counts as a failed probe: 10 minutes see about a dozen probes, not 120."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        flaky.mode = "garbage"
        _probe_for(600, clock, prober)
        assert len(journal_events(service.db, "outage.probe")) <= 15

    def test_each_distinct_reason_once_also_across_a_restart(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        registry: UnitRegistry,
        clock: FrozenClock,
    ) -> None:
        """garbage, down, garbage: two events; a restarted service journals neither again."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        for mode in ("garbage", "down", "garbage"):
            flaky.mode = mode
            assert service.recover(REGISTER) is None
        assert len(journal_events(service.db, "outage.recovery_failed")) == 2
        again = ReceiptService(service.db, registry, clock=clock)
        for mode in ("down", "garbage"):
            flaky.mode = mode
            assert again.recover(REGISTER) is None
        assert len(journal_events(service.db, "outage.recovery_failed")) == 2

    def test_a_new_outage_journals_its_reasons_anew(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """The same reason in the next outage is journaled for that outage."""
        for n in (1, 2):
            flaky.mode = "down"
            service.issue(sale(request_id=f"r-{n}"))
            flaky.mode = "garbage"
            assert service.recover(REGISTER) is None
            flaky.mode = "up"
            assert service.recover(REGISTER)
        assert [e["outage"] for e in journal_events(service.db, "outage.recovery_failed")] == [1, 2]

    def test_the_status_shows_the_last_reason(
        self, service: ReceiptService, flaky: FlakyUnit, registry: UnitRegistry, clock: FrozenClock
    ) -> None:
        """The open outage in the status says why recovery failed, also after a restart."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        [register] = ServiceBackend(service).status().registers
        assert register.open_outage is not None
        assert register.open_outage.recovery_failed is None
        flaky.mode = "garbage"
        assert service.recover(REGISTER) is None
        [register] = ServiceBackend(service).status().registers
        assert register.open_outage is not None
        reason = register.open_outage.recovery_failed
        assert reason is not None
        assert "signature" in reason.lower()
        restarted = ReceiptService(service.db, registry, clock=clock)
        [register] = ServiceBackend(restarted).status().registers
        assert register.open_outage is not None
        assert register.open_outage.recovery_failed == reason

"""A Schlussbeleg waits while the register waits for its unit (agent/issuing.py).

After a Schlussbeleg the register issues nothing, so a Schlussbeleg issued during an
outage (or one that itself met the failure) left the outage open for good: no Sammelbeleg
could follow, and the 48 h escalations went on. It is refused instead, consuming nothing.
"""

from __future__ import annotations

import sqlite3

import pytest

from agent.errors import FiscalError, WaitsForUnit
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import sale
from storage import TillDB

REGISTER = "KASSE-1"


@pytest.fixture(name="flaky")
def _flaky(
    bare_service: ReceiptService, registry: UnitRegistry, unit_config: UnitConfig
) -> FlakyUnit:
    unit = FlakyUnit(open_unit(unit_config))
    registry.put(unit)
    return unit


def _state(db: TillDB) -> tuple[int, str, int]:
    """The register's last number, its state, and the journal's length."""
    conn = sqlite3.connect(db.path)
    try:
        number, state = conn.execute(
            "SELECT last_number, state FROM registers WHERE id = ?", (REGISTER,)
        ).fetchone()
        (events,) = conn.execute("SELECT count(*) FROM journal").fetchone()
        return int(number), str(state), int(events)
    finally:
        conn.close()


def _open_outages(db: TillDB) -> int:
    conn = sqlite3.connect(db.path)
    try:
        (count,) = conn.execute("SELECT count(*) FROM outages WHERE ended_at IS NULL").fetchone()
        return int(count)
    finally:
        conn.close()


class TestSchlussbelegDuringAnOutage:
    def test_it_is_refused_while_an_outage_is_open(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A fallback sale opened the outage: the Schlussbeleg is refused (a FiscalError
        that says it waits for the Sammelbeleg) and consumes nothing."""
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        before = _state(service.db)
        with pytest.raises(WaitsForUnit, match=r"open outage.*Sammelbeleg") as refused:
            service.issue_special(REGISTER, "closing")
        assert isinstance(refused.value, FiscalError)
        assert _state(service.db) == before
        assert before[1] == "active"

    def test_after_recovery_the_outage_closes_and_then_the_register_can_close(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """The unit back, recovery issues the Sammelbeleg; then the Schlussbeleg is signed."""
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        with pytest.raises(WaitsForUnit):
            service.issue_special(REGISTER, "closing")
        flaky.mode = "up"  # the unit is back but the outage is open: still refused
        with pytest.raises(WaitsForUnit):
            service.issue_special(REGISTER, "closing")
        recovered = service.recover(REGISTER)
        assert recovered is not None
        assert [r.kind for r in recovered] == ["sammelbeleg"]
        assert _open_outages(service.db) == 0
        closing = service.issue_special(REGISTER, "closing")
        assert (closing.kind, closing.signature_state) == ("closing", "signed")
        assert _state(service.db)[1] == "closed"
        assert service.probe_targets() == []

    def test_a_schlussbeleg_that_meets_the_failure_itself_is_refused(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """No outage yet, the unit fails on the Schlussbeleg: refused, no outage opened
        that nothing could close, no number used."""
        flaky.mode = "down"
        before = _state(service.db)
        with pytest.raises(WaitsForUnit, match="Schlussbeleg is issued only when it signs"):
            service.issue_special(REGISTER, "closing")
        assert _state(service.db) == before
        assert _open_outages(service.db) == 0
        assert not service.outages.is_open(REGISTER)
        flaky.mode = "up"
        assert service.issue_special(REGISTER, "closing").signature_state == "signed"

    def test_it_is_refused_while_a_jahresbeleg_waits(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A waiting Jahresbeleg could not be issued after the Schlussbeleg either (nor
        the Sammelbeleg of the outage its failure opened)."""
        flaky.mode = "down"
        assert service.request_special(REGISTER, "yearly", period="2026-12") is None
        flaky.mode = "up"
        with pytest.raises(WaitsForUnit, match="the Schlussbeleg waits"):
            service.issue_special(REGISTER, "closing")
        assert service.recover(REGISTER) is not None
        assert service.issue_special(REGISTER, "closing").signature_state == "signed"

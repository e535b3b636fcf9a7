"""A Startbeleg left waiting when the register was then created by hand (``till-agent
init``) must not block recovery: of that register, nor (through the prober) of others."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing.flaky import FlakyUnit
from factories import journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"


def _findings(db: TillDB, register: str = REGISTER) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, register, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, register)))
    return [f"{f.receipt}: {f.rule}" for f in report.findings]


def _stale_start(service: ReceiptService, flaky: FlakyUnit) -> None:
    """``run``'s first start with the unit down, then ``till-agent init`` by hand."""
    flaky.mode = "down"
    assert service.init_register_or_wait(RegisterSetup(REGISTER, ["dev"])) is None
    flaky.mode = "up"
    assert service.init_register(RegisterSetup(REGISTER, ["dev"])).number == 1


def _fallback_sale(service: ReceiptService, flaky: FlakyUnit, register: str) -> None:
    flaky.mode = "down"
    assert service.issue(sale(register=register)).signature_state == "fallback"
    flaky.mode = "up"


class TestInitSettlesTheWaitingStartbeleg:
    def test_init_by_hand_settles_the_waiting_startbeleg(
        self, bare_service: ReceiptService, bare_flaky: FlakyUnit
    ) -> None:
        """The Startbeleg issued by init is the one that waited: the row is done with it,
        journaled as special.issued, and nothing is left for the prober."""
        _stale_start(bare_service, bare_flaky)
        assert bare_service.waiting() == []
        issued = journal_events(bare_service.db, "special.issued")
        assert [(e["kind"], e["number"]) for e in issued] == [("start", 1)]
        assert bare_service.probe_targets() == []
        _fallback_sale(bare_service, bare_flaky, REGISTER)
        result = bare_service.recover(REGISTER)
        assert result is not None
        assert [r.kind for r in result] == ["sammelbeleg"]
        assert not bare_service.outages.is_open(REGISTER)
        assert _findings(bare_service.db) == []


class TestAStaleWaitingStartbelegIsSettled:
    def _leave_stale_row(self, service: ReceiptService) -> None:
        """A row left by a version that did not settle it (init_register leaves none now)."""
        with service.db.write_connection().transaction() as conn:
            conn.execute(
                "UPDATE waiting_specials SET done_at = NULL, number = NULL WHERE kind = 'start'"
            )

    def test_recovery_settles_a_stale_waiting_startbeleg(
        self, bare_service: ReceiptService, bare_flaky: FlakyUnit
    ) -> None:
        """Recovery finds the register created: the row is done with its Startbeleg and the
        outage gets its Sammelbeleg."""
        _stale_start(bare_service, bare_flaky)
        self._leave_stale_row(bare_service)
        _fallback_sale(bare_service, bare_flaky, REGISTER)
        result = bare_service.recover(REGISTER)
        assert result is not None
        assert [(r.kind, r.signature_state) for r in result] == [("sammelbeleg", "signed")]
        assert bare_service.waiting() == []
        assert not bare_service.outages.is_open(REGISTER)
        assert _findings(bare_service.db) == []

    def test_one_registers_failing_recovery_does_not_stop_the_others(
        self,
        bare_service: ReceiptService,
        bare_flaky: FlakyUnit,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The prober logs KASSE-1's failure once per run of failures and still closes
        KASSE-2's outage."""
        bare_service.init_register(RegisterSetup("KASSE-2", ["dev"]))
        _stale_start(bare_service, bare_flaky)
        _fallback_sale(bare_service, bare_flaky, "KASSE-1")
        _fallback_sale(bare_service, bare_flaky, "KASSE-2")
        real = bare_service.recover

        def recover(register_id: str) -> object:
            if register_id == "KASSE-1":
                raise RuntimeError("recovery broke")
            return real(register_id)

        monkeypatch.setattr(bare_service, "recover", recover)
        prober = Prober(bare_service, Backoff(initial=0.0, cap=0.0, jitter=0.0))
        with caplog.at_level(logging.ERROR, logger="agent.probe"):
            for _ in range(3):
                prober.run_once()
        assert not bare_service.outages.is_open("KASSE-2")
        assert bare_service.outages.is_open("KASSE-1")
        logged = [r.getMessage() for r in caplog.records if r.name == "agent.probe"]
        assert [m.count("recovery broke") for m in logged] == [1]
        monkeypatch.setattr(bare_service, "recover", real)
        prober.run_once()
        assert not bare_service.outages.is_open("KASSE-1")
        for register in ("KASSE-1", "KASSE-2"):
            assert _findings(bare_service.db, register) == []

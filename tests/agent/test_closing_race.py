"""The closing job and the probe's recovery run in two threads (agent/receipts.py).

The job works from the registers as it read them; a waiting Jahresbeleg that the
recovery issues meanwhile must not be issued a second time by the job.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit, open_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import add_unit, db_rows
from storage import TillDB


def test_a_jahresbeleg_the_recovery_issued_meanwhile_is_not_issued_again(
    service: ReceiptService,
    db: TillDB,
    registry: UnitRegistry,
    clock: FrozenClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KASSE-2's unit is down on 31 December: its Jahresbeleg waits. On 31 January the
    unit is back; while the job signs KASSE-1's closing, the recovery (the probe's thread)
    issues KASSE-2's Jahresbeleg. The job then issues January's Monatsbeleg for KASSE-2,
    not a second Jahresbeleg."""
    key, cert = create_software_unit(tmp_path / "units", name="dev2")
    config = UnitConfig(id="dev2", kind="software", zda="AT1", key_file=key, certificate_file=cert)
    add_unit(db, registry, config)
    flaky = FlakyUnit(open_unit(config))
    registry.put(flaky)
    clock.set(dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC))
    service.init_register(RegisterSetup("KASSE-2", ["dev2"]))
    flaky.mode = "down"
    clock.set(dt.datetime(2026, 12, 31, 22, 59, 10, tzinfo=dt.UTC))
    service.run_closings()
    assert service.waiting("KASSE-2")[0]["kind"] == "yearly"

    flaky.mode = "up"
    clock.set(dt.datetime(2027, 1, 31, 22, 59, 10, tzinfo=dt.UTC))
    job = service.request_special
    recovered: list[ReceiptResult] = []

    def while_signing(register_id: str, kind: str, **kw: Any) -> ReceiptResult | None:
        result = job(register_id, kind, **kw)
        if register_id == "KASSE-1":  # the other thread, as the job signs KASSE-1's
            recovered.extend(service.recover("KASSE-2") or [])
        return result

    monkeypatch.setattr(service, "request_special", while_signing)
    service.run_closings()
    # the Jahresbeleg's failure opened the outage: its Sammelbeleg comes first
    assert [r.kind for r in recovered] == ["sammelbeleg", "yearly"]
    rows = db_rows(
        db,
        "SELECT kind, json_extract(document, '$.period') AS period FROM receipts"
        " WHERE register_id = 'KASSE-2' ORDER BY number",
    )
    assert [(r["kind"], r["period"]) for r in rows] == [
        ("start", None),
        ("sammelbeleg", None),
        ("yearly", "2026-12"),
        ("monthly", "2027-01"),
    ]

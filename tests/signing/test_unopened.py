"""A stored unit that cannot be opened after a restart: the till keeps selling.

The token is out or the key unreadable when the service starts: receipts take the
fallback path with the unit's stored identity, the outage opens, and once the unit can be
opened again the probe's recovery issues the signed Sammelbeleg (reference/rksv.md 5).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from conftest import REGISTER, UNIT

from agent.at_rksv.verify import verify_dep
from agent.errors import UnitUnavailable
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry, UnopenedUnit
from factories import sale
from storage import TillDB


def _restart(service: ReceiptService) -> ReceiptService:
    """A new service on the same database, with a registry that has opened nothing."""
    service.units.close()
    return ReceiptService(service.db, UnitRegistry(), clock=service.clock)


def test_a_unit_that_cannot_be_opened_gives_fallback_receipts_then_recovers(
    service: ReceiptService, unit_config: UnitConfig, db: TillDB
) -> None:
    assert unit_config.key_file is not None
    key = unit_config.key_file.read_bytes()
    serial = service.issue(sale(request_id="before")).qr.split("_")[11]
    unit_config.key_file.write_bytes(b"")  # the token is out: the key cannot be loaded

    restarted = _restart(service)
    first = restarted.issue(sale(request_id="during-1"))
    second = restarted.issue(sale(request_id="during-2"))
    assert (first.signature_state, second.signature_state) == ("fallback", "fallback")
    assert first.qr.split("_")[11] == serial  # the stored identity, not a guess
    assert restarted.outages.is_open(REGISTER)

    unit = restarted.unit_of(REGISTER)
    assert isinstance(unit, UnopenedUnit)
    with pytest.raises(UnitUnavailable, match="cannot be opened"):
        unit.probe(deadline=time.monotonic() + 5)  # the open has its deadline
    assert restarted.recover(REGISTER) is None  # still out: nothing issued

    unit_config.key_file.write_bytes(key)  # back in: the probe opens it, as the prober does
    unit.probe(deadline=time.monotonic() + 5)  # the open has its deadline
    issued = restarted.recover(REGISTER)
    assert issued is not None
    assert [r.kind for r in issued] == ["sammelbeleg"]
    assert issued[0].signature_state == "signed"
    assert not restarted.outages.is_open(REGISTER)
    assert restarted.issue(sale(request_id="after")).signature_state == "signed"
    assert not isinstance(restarted.unit_of(REGISTER), UnopenedUnit)

    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    assert [f"{f.receipt}: {f.rule}" for f in report.findings] == []


def test_a_unit_opened_with_another_key_is_not_taken_for_it(
    service: ReceiptService, unit_config: UnitConfig, tmp_path: Path
) -> None:
    """A different token in the slot keeps the outage open: its receipts would carry
    another serial than the register's chain announces."""
    assert unit_config.key_file is not None
    assert unit_config.certificate_file is not None
    unit_config.key_file.write_bytes(b"")
    restarted = _restart(service)
    assert restarted.issue(sale(request_id="during")).signature_state == "fallback"
    other_key, other_cert = create_software_unit(tmp_path / "other", name=UNIT)
    assert other_cert is not None
    unit_config.key_file.write_bytes(other_key.read_bytes())
    unit_config.certificate_file.write_bytes(other_cert.read_bytes())
    unit = restarted.unit_of(REGISTER)
    with pytest.raises(UnitUnavailable, match="an id of its own"):
        unit.probe(deadline=time.monotonic() + 5)  # the open has its deadline
    assert restarted.recover(REGISTER) is None
    assert restarted.outages.is_open(REGISTER)

"""The development unit of a first `run` signs as the fictitious provider AT100, never as a
real one; a data directory whose development unit an earlier version stored as AT1 keeps it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from service.conftest import Start

from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.service import DEV_UNIT, TillService
from agent.signing import UnitConfig, create_software_unit, open_unit
from agent.signing.registry import store_unit
from factories import journal_events, sale
from storage.db import open_till_db

REGISTER = "KASSE-1"


def _stored_zda(service: TillService) -> str:
    with service.db.read_connection() as conn:
        (zda,) = conn.execute("SELECT zda FROM units WHERE id = ?", (DEV_UNIT,)).fetchone()
    return str(zda)


def _qr_codes(service: TillService, count: int) -> list[str]:
    """Issue ``count`` sales on the default register; their QR codes, the Startbeleg's first."""
    codes = [service.backend.get(REGISTER, 1).qr]
    for n in range(count):
        issued = service.backend.issue_sale(json.dumps(sale(request_id=f"r{n}")).encode())
        codes.append(issued.qr)
    return codes


def _assert_dep_verifies(service: TillService) -> None:
    buffer = io.StringIO()
    export_dep(service.db, REGISTER, buffer)
    container = json.loads(export_container(service.db, REGISTER))
    report = verify_dep(json.loads(buffer.getvalue()), container)
    assert [f"{f.receipt}: {f.rule}" for f in report.findings] == []


def _stored_as_at1_before(data_dir: Path) -> None:
    """A data directory as an earlier version left it: the development unit's key files
    in ``keys/`` and the unit stored with provider AT1, no register yet."""
    key_file, cert_file = create_software_unit(data_dir / "keys", name=DEV_UNIT)
    assert cert_file is not None
    config = UnitConfig(  # as that version configured it
        id=DEV_UNIT,
        kind="software",
        zda="AT1",
        key_file=key_file.resolve(),
        certificate_file=cert_file.resolve(),
        simulate=True,
    )
    db = open_till_db(data_dir)
    unit = open_unit(config)
    try:
        with db.write_connection().transaction() as conn:
            store_unit(conn, config, unit, "2026-11-01T08:00:00+00:00")
    finally:
        unit.close()
        db.close()


def test_a_new_development_unit_signs_as_at100(start: Start) -> None:
    service = start()
    codes = _qr_codes(service, 2)
    assert all(code.startswith(f"_R1-AT100_{REGISTER}_") for code in codes), codes
    assert _stored_zda(service) == "AT100"
    _assert_dep_verifies(service)


def test_a_development_unit_stored_as_at1_keeps_its_suite(
    start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its receipts keep R1-AT1 across restarts (the unit's identity is pinned), the start
    logs no error about another suite, and the unit is not stored again."""
    _stored_as_at1_before(data_dir)
    start().stop()
    service = start()
    codes = _qr_codes(service, 2)
    assert all(code.startswith(f"_R1-AT1_{REGISTER}_") for code in codes), codes
    assert _stored_zda(service) == "AT1"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert len(journal_events(service.db, "unit.stored")) == 1
    _assert_dep_verifies(service)

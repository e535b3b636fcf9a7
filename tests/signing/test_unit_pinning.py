"""A stored unit's identity is pinned: another key under its id is refused, never used.

Its receipts carry its serial and the DEP's crypto container holds its key (rksv.md 7):
a swapped token or a changed configuration that signed under the same id would make the
export unverifiable, and replacing the stored certificate would lose the key of every
receipt signed before.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from conftest import REGISTER, UNIT

from agent.at_rksv.verify import verify_dep
from agent.config import AgentConfig
from agent.errors import ConfigurationError
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService
from agent.service import TillService
from agent.signing import UnitConfig, create_software_unit, open_unit
from agent.signing.registry import UnitRegistry, UnopenedUnit, store_unit
from factories import sale
from storage import TillDB


def _unit_row(db: TillDB) -> tuple[object, ...]:
    with db.read_connection() as conn:
        row = conn.execute(
            "SELECT zda, serial, public_key_der, certificate_der, created_at, config"
            " FROM units WHERE id = ?",
            (UNIT,),
        ).fetchone()
    return tuple(row)


def _assert_dep_verifies(db: TillDB) -> None:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    assert [f"{f.receipt}: {f.rule}" for f in report.findings] == []


def _other_key(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = create_software_unit(tmp_path / "other", name=UNIT)
    assert cert is not None
    return key, cert


def test_a_key_swapped_in_place_is_not_used_and_the_dep_still_verifies(
    service: ReceiptService, unit_config: UnitConfig, db: TillDB, tmp_path: Path
) -> None:
    """The files under the unit's configured paths now hold another key: after a restart
    the till keeps selling with fallback receipts under the stored serial (the outage
    opens), instead of signing receipts nobody can verify."""
    assert unit_config.key_file is not None
    assert unit_config.certificate_file is not None
    serial = service.issue(sale(request_id="before")).qr.split("_")[11]
    key, cert = _other_key(tmp_path)
    unit_config.key_file.write_bytes(key.read_bytes())
    unit_config.certificate_file.write_bytes(cert.read_bytes())

    service.units.close()
    restarted = ReceiptService(db, UnitRegistry(), clock=service.clock)
    after = restarted.issue(sale(request_id="after"))
    assert after.signature_state == "fallback"
    assert after.qr.split("_")[11] == serial
    assert restarted.outages.is_open(REGISTER)
    unit = restarted.unit_of(REGISTER)
    assert isinstance(unit, UnopenedUnit)
    assert f"unit {UNIT} opened with another serial and public key and certificate" in unit.reason
    _assert_dep_verifies(db)


def test_storing_another_key_under_a_stored_id_is_refused_and_changes_nothing(
    service: ReceiptService, unit_config: UnitConfig, db: TillDB, tmp_path: Path
) -> None:
    service.issue(sale(request_id="signed"))
    before = _unit_row(db)
    key, cert = _other_key(tmp_path)
    other = unit_config.model_copy(update={"key_file": key, "certificate_file": cert})
    unit = open_unit(other)
    try:
        with (
            pytest.raises(ConfigurationError, match="an id of its own") as refused,
            db.write_connection().transaction() as conn,
        ):
            store_unit(conn, other, unit, "2026-06-01T00:00:00+00:00")
    finally:
        unit.close()
    assert f"stored: R1-AT1 serial {before[1]}" in str(refused.value)
    assert _unit_row(db) == before  # the certificate of the receipts signed so far is kept
    _assert_dep_verifies(db)


def test_a_moved_key_file_updates_the_configuration_and_keeps_the_identity(
    service: ReceiptService, unit_config: UnitConfig, db: TillDB, tmp_path: Path
) -> None:
    assert unit_config.key_file is not None
    assert unit_config.certificate_file is not None
    before = _unit_row(db)
    moved = tmp_path / "moved"
    moved.mkdir()
    key = unit_config.key_file.rename(moved / unit_config.key_file.name)
    cert = unit_config.certificate_file.rename(moved / unit_config.certificate_file.name)
    config = unit_config.model_copy(update={"key_file": key, "certificate_file": cert})
    unit = open_unit(config)
    try:
        with db.write_connection().transaction() as conn:
            store_unit(conn, config, unit, "2026-06-01T00:00:00+00:00")
    finally:
        unit.close()
    after = _unit_row(db)
    assert after[:5] == before[:5]  # identity and the date it was added
    assert UnitConfig.model_validate_json(str(after[5])) == config

    service.units.close()
    restarted = ReceiptService(db, UnitRegistry(), clock=service.clock)
    assert restarted.issue(sale(request_id="moved")).signature_state == "signed"
    _assert_dep_verifies(db)


def test_run_keeps_the_stored_unit_when_the_configured_key_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``[[units]]`` pointing the id at another key: the service starts and keeps selling
    with the unit as stored (here its key is still there: signed receipts under its
    serial), says so at ERROR, and the stored unit is left as it was."""
    data = tmp_path / "data"
    key, cert = create_software_unit(tmp_path / "first", name="till")
    other_key, other_cert = create_software_unit(tmp_path / "second", name="till")

    def config(key_file: Path, cert_file: Path) -> AgentConfig:
        unit = {"id": "till", "kind": "software", "zda": "AT1"}
        unit |= {"key_file": str(key_file), "certificate_file": str(cert_file)}
        settings = {"spool": {"enabled": False}, "printer": {"kind": "none"}}
        settings |= {"api": {"enabled": False}, "backup": {"enabled": False}}
        return AgentConfig.model_validate({"data_dir": data, "units": [unit], **settings})

    first = TillService(config(key, cert))
    first.start()
    first.stop()
    with sqlite3.connect(data / "till.sqlite3") as conn:
        stored = conn.execute("SELECT serial, public_key_der, config FROM units").fetchall()

    second = TillService(config(other_key, other_cert))
    with caplog.at_level(logging.ERROR, logger="agent.service"):
        second.start()
    try:
        issued = second.receipts.issue(sale(register="KASSE-1"))
        assert issued.signature_state == "signed"
        assert issued.qr.split("_")[11] == stored[0][0]
    finally:
        second.stop()
    assert any("unit till opened with another serial" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(data / "till.sqlite3") as conn:
        assert conn.execute("SELECT serial, public_key_der, config FROM units").fetchall() == stored

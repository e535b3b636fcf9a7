"""The units of a new register (agent/registers.py): one system, told apart by serial."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import InvalidSale
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from factories import add_unit
from storage import TillDB


def _unit(db: TillDB, registry: UnitRegistry, tmp_path: Path, name: str, **ids: str) -> None:
    key, cert = create_software_unit(tmp_path / "units", name=name, key_id=ids.get("key_id"))
    zda = "AT0" if "key_id" in ids else "AT1"
    config = UnitConfig(
        id=name,
        kind="software",
        zda=zda,
        key_file=key,
        certificate_file=cert,
        key_id=ids.get("key_id"),
    )
    add_unit(db, registry, config)


def _registers(db: TillDB) -> int:
    with sqlite3.connect(db.path) as conn:
        return int(conn.execute("SELECT count(*) FROM registers").fetchone()[0])


def test_two_closed_units_with_one_key_id_and_two_keys_are_refused(
    bare_service: ReceiptService, db: TillDB, registry: UnitRegistry, tmp_path: Path
) -> None:
    """Rule serial-unique: the crypto container would keep one key for both, and every
    receipt of the other would fail verification; nothing is created."""
    for name in ("a", "b"):
        _unit(db, registry, tmp_path, name, key_id="U:ATU12345678-K1")
    with pytest.raises(InvalidSale) as refused:
        bare_service.init_register(RegisterSetup("KASSE-1", ["a", "b"]))
    assert (refused.value.field, refused.value.rule) == ("units", "serial-unique")
    assert "U:ATU12345678-K1" in refused.value.message
    assert _registers(db) == 0


def test_closed_units_with_their_own_key_ids_make_a_register(
    bare_service: ReceiptService, db: TillDB, registry: UnitRegistry, tmp_path: Path
) -> None:
    _unit(db, registry, tmp_path, "a", key_id="U:ATU12345678-K1")
    _unit(db, registry, tmp_path, "b", key_id="U:ATU12345678-K2")
    assert bare_service.init_register(RegisterSetup("KASSE-1", ["a", "b"])).number == 1

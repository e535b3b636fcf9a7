"""Shared fixtures: a till database on disk, a development signature unit and a service.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so test modules import
the plain factory functions with ``from factories import ...``.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_module
from agent.clock import FrozenClock
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import add_unit, require_vectors
from storage import TillDB, open_till_db

REGISTER = "KASSE-1"
UNIT = "dev"
START = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # 11:00 in Vienna

Query = Callable[..., list[sqlite3.Row]]
WriteConfig = Callable[[str], Path]


@pytest.fixture(name="opened_dbs", autouse=True)
def _opened_dbs() -> Iterator[list[TillDB]]:
    """Every database opened through ``open_db`` is closed at teardown, even after a failure."""
    opened: list[TillDB] = []
    yield opened
    for db in reversed(opened):
        db.close()


@pytest.fixture(name="open_db")
def _open_db(opened_dbs: list[TillDB]) -> Callable[..., TillDB]:
    """``open_till_db`` whose result is closed at teardown."""

    def open_db(data_dir: Path, **kwargs: Any) -> TillDB:
        db = open_till_db(data_dir, **kwargs)
        opened_dbs.append(db)
        return db

    return open_db


@pytest.fixture(name="vectors")
def _vectors() -> Path:
    """The RKSV conformance vectors (../shared/vectors/rksv); a test that needs them and
    finds none is skipped, or failed under TILL_TESTS_VECTORS=required (``.ci/run``)."""
    return require_vectors()


@pytest.fixture(name="data_dir")
def _data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(name="db")
def _db(data_dir: Path, open_db: Callable[..., TillDB]) -> TillDB:
    return open_db(data_dir)


@pytest.fixture(name="query")
def _query(db: TillDB) -> Query:
    """Run one read-only SQL statement on a fresh connection of its own and return the rows."""

    def query(sql: str, *params: Any) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    return query


@pytest.fixture(name="registry")
def _registry() -> Iterator[UnitRegistry]:
    registry = UnitRegistry()
    yield registry
    registry.close()


@pytest.fixture(name="unit_config")
def _unit_config(tmp_path: Path) -> UnitConfig:
    """A development software unit (self-signed certificate, ZDA AT1) written to tmp_path."""
    key_file, cert_file = create_software_unit(tmp_path / "units", name=UNIT)
    return UnitConfig(
        id=UNIT, kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
    )


@pytest.fixture(name="clock")
def _clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(name="bare_service")
def _bare_service(
    db: TillDB, registry: UnitRegistry, unit_config: UnitConfig, clock: FrozenClock
) -> ReceiptService:
    """A receipt service whose database knows the unit but has no register yet."""
    add_unit(db, registry, unit_config)
    return ReceiptService(db, registry, clock=clock)


@pytest.fixture(name="service")
def _service(bare_service: ReceiptService) -> ReceiptService:
    """A receipt service with register KASSE-1 initialized (its Startbeleg is number 1)."""
    bare_service.init_register(RegisterSetup(REGISTER, [UNIT]))
    return bare_service


@pytest.fixture(name="flaky")
def _flaky(service: ReceiptService, registry: UnitRegistry) -> FlakyUnit:
    """The register's unit wrapped so the test can switch it down, up or to garbage."""
    with service.db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, UNIT))
    registry.put(flaky)
    return flaky


@pytest.fixture(name="no_system_config")
def _no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither /etc/till-agent/config.toml nor TILL_AGENT_* variables of this machine count."""
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", tmp_path / "etc" / "config.toml")
    for name in list(os.environ):
        if name.startswith("TILL_AGENT_") or name in ("STATE_DIRECTORY", "XDG_DATA_HOME"):
            monkeypatch.delenv(name)


@pytest.fixture(name="write_config")
def _write_config(tmp_path: Path) -> WriteConfig:
    """Write TOML text to ``tmp_path/config.toml`` and return the path."""

    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write

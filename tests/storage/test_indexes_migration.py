"""Migration 0009: the partial indexes of the rare receipts and journal events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from storage import DB_FILE, make_engine
from storage.migrate import downgrade_to, upgrade_to_head

# each index of 0009: its table and the WHERE that keeps it to the rare rows
INDEXES = {
    "ix_receipts_unsigned": ("receipts", "signature_state = 'unsigned'"),
    "ix_receipts_voids": ("receipts", "voids_number IS NOT NULL"),
    "ix_receipts_start_yearly": ("receipts", "kind IN ('start', 'yearly')"),
    "ix_journal_backup_late": ("journal", "kind = 'dep.backup_late'"),
}


@pytest.fixture(name="engine")
def _engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(tmp_path / DB_FILE)
    yield engine
    engine.dispose()


def _indexes(engine: Engine) -> dict[str, tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'")
        ).all()
    return {
        str(name): (str(table), str(sql).split(" WHERE ", 1)[1])
        for name, table, sql in rows
        if name in INDEXES
    }


def test_the_indexes_come_with_0009_and_go_with_its_downgrade(engine: Engine) -> None:
    """Down to 0008: none of the four indexes (the tables stay); up to head again: each
    of them, partial with its own WHERE."""
    upgrade_to_head(engine)
    assert _indexes(engine) == INDEXES
    downgrade_to(engine, "0008")
    assert _indexes(engine) == {}
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
        assert {"receipts", "journal"} <= {str(t[0]) for t in tables}
    upgrade_to_head(engine)
    assert _indexes(engine) == INDEXES

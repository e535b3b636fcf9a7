"""Alembic migrations of the till database (storage/migrate.py, storage/migrations/)."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.errors import StorageError
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService
from agent.signing.registry import UnitRegistry
from factories import sale
from storage import DB_FILE, TillDB, make_engine
from storage.db import table_names
from storage.journal import Event, iter_events, verify_journal
from storage.migrate import (
    MIGRATED,
    alembic_config,
    current_revision,
    downgrade_to,
    head_revision,
    migration,
    upgrade_to_head,
)
from storage.models import APPEND_ONLY_TABLES, Base

TABLES = sorted(["alembic_version", *Base.metadata.tables])
TRIGGERS = sorted(f"{t}_no_{a}" for t in APPEND_ONLY_TABLES for a in ("update", "delete"))


def _downgrade(engine: Engine, revision: str) -> None:
    downgrade_to(engine, revision)


def _drift(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _constraint_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name != 'alembic_version'")
        )
        return sorted(set(re.findall(r"CONSTRAINT (\w+)", "\n".join(str(r[0]) for r in rows))))


def _triggers(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        return sorted(str(r[0]) for r in rows)


@pytest.fixture(name="engine")
def _engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database file, with the till PRAGMAs but no schema."""
    engine = make_engine(tmp_path / DB_FILE)
    yield engine
    engine.dispose()


class TestFromEmpty:
    def test_upgrade_creates_every_table(self, engine: Engine) -> None:
        """An empty file upgraded to head has exactly the till tables."""
        upgrade_to_head(engine)
        assert table_names(engine) == TABLES

    def test_models_and_migrations_agree(self, engine: Engine) -> None:
        """Autogenerate finds nothing to change between head and the SQLAlchemy models."""
        upgrade_to_head(engine)
        assert _drift(engine) == []

    def test_constraint_names_match_the_models(self, engine: Engine, tmp_path: Path) -> None:
        """Every named constraint in the migrated schema has the name the models give it."""
        upgrade_to_head(engine)
        reference = make_engine(tmp_path / "models.sqlite3")
        try:
            Base.metadata.create_all(reference)
            assert _constraint_names(engine) == _constraint_names(reference)
        finally:
            reference.dispose()

    def test_upgrade_records_the_head_revision(self, engine: Engine) -> None:
        """After the upgrade the database is stamped with the newest revision."""
        assert current_revision(engine) is None
        upgrade_to_head(engine)
        assert current_revision(engine) == head_revision()
        assert head_revision() is not None

    def test_upgrade_installs_the_append_only_triggers(self, engine: Engine) -> None:
        """Invariant 7 is in the schema: UPDATE and DELETE triggers on receipts and journal."""
        upgrade_to_head(engine)
        assert _triggers(engine) == TRIGGERS

    def test_upgrading_twice_changes_nothing(self, engine: Engine) -> None:
        """Opening an up-to-date database runs no migration and keeps its rows."""
        upgrade_to_head(engine)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO journal VALUES (NULL, 'at', NULL, 'k', '{}', 'p', 'h')"))
        upgrade_to_head(engine)
        with engine.connect() as conn:  # the first upgrade's schema.migrated and this one
            assert conn.execute(text("SELECT count(*) FROM journal")).scalar_one() == 2
        assert _drift(engine) == []


class TestDowngrade:
    def test_downgrade_to_base_removes_the_schema(self, engine: Engine) -> None:
        """Down to base leaves only Alembic's own table, with no revision and no trigger."""
        upgrade_to_head(engine)
        _downgrade(engine, "base")
        assert table_names(engine) == ["alembic_version"]
        assert _triggers(engine) == []
        assert current_revision(engine) is None

    def test_upgrade_after_downgrade_rebuilds_the_same_schema(self, engine: Engine) -> None:
        """Down to base and up to head again gives a schema that still matches the models."""
        upgrade_to_head(engine)
        _downgrade(engine, "base")
        upgrade_to_head(engine)
        assert table_names(engine) == TABLES
        assert _triggers(engine) == TRIGGERS
        assert _drift(engine) == []
        assert current_revision(engine) == head_revision()


class TestOpenTillDb:
    def test_open_migrates_a_new_data_directory(self, db: TillDB) -> None:
        """open_till_db creates the file and brings it to head in one step."""
        assert table_names(db.engine) == TABLES
        assert current_revision(db.engine) == head_revision()

    def test_reopen_keeps_the_data(
        self, db: TillDB, data_dir: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """Closing and reopening a migrated database keeps its rows and revision."""
        with db.writer.begin() as conn:
            conn.execute(text("INSERT INTO journal VALUES (NULL, 'at', NULL, 'k', '{}', 'p', 'h')"))
        db.close()
        again = open_db(data_dir)
        with again.engine.connect() as conn:  # the new till's schema.migrated and this one
            assert conn.execute(text("SELECT count(*) FROM journal")).scalar_one() == 2
        assert current_revision(again.engine) == head_revision()

    def test_a_reader_does_not_migrate(
        self, tmp_path: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """writer=False opens an unmigrated file as it is and leaves migrations to the writer."""
        data_dir = tmp_path / "plain"
        data_dir.mkdir()
        sqlite3.connect(data_dir / DB_FILE).close()
        reader = open_db(data_dir, writer=False)
        assert current_revision(reader.engine) is None

    def test_a_database_of_a_later_version_is_refused_as_it_is(
        self, db: TillDB, data_dir: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """Going back to an earlier till-agent: its migrations do not know the database's
        revision. A StorageError says so and what to do (alembic's CommandError, "Can't
        locate revision", said neither), and the database is left as it was."""
        db.close()
        with sqlite3.connect(data_dir / DB_FILE) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999_later'")
        with pytest.raises(StorageError, match="'9999_later', which this version") as refused:
            open_db(data_dir)
        assert "a later version migrated it" in str(refused.value)
        assert "copy of the database taken before the upgrade" in str(refused.value)
        with sqlite3.connect(data_dir / DB_FILE) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
                ("9999_later",)
            ]

    def test_a_reader_refuses_a_database_not_migrated_yet(
        self, db: TillDB, data_dir: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """A reader does not migrate, and an earlier schema lacks tables and columns it
        reads: it refuses it, naming the revision and what migrates it; nothing changes."""
        db.close()
        engine = make_engine(data_dir / DB_FILE)
        _downgrade(engine, "0003")
        engine.dispose()
        with pytest.raises(StorageError, match="schema revision '0003', not this") as refused:
            open_db(data_dir, writer=False)
        assert "`till-agent run`" in str(refused.value)
        with sqlite3.connect(data_dir / DB_FILE) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert current_revision(open_db(data_dir).engine) == head_revision()

    def test_a_reader_refuses_a_database_of_a_later_version(
        self, db: TillDB, data_dir: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """As a writer does (above)."""
        db.close()
        with sqlite3.connect(data_dir / DB_FILE) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999_later'")
        with pytest.raises(StorageError, match="a later version migrated it"):
            open_db(data_dir, writer=False)


def _events_after(db: TillDB, seq: int) -> list[Event]:
    with db.engine.connect() as conn:
        return list(iter_events(conn, after=seq))


def _earlier_revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    return sorted(str(s.revision) for s in scripts.walk_revisions() if s.revision != head)


class TestUpgradeWithData:
    @pytest.mark.parametrize("revision", _earlier_revisions())
    def test_a_till_of_an_earlier_revision_upgrades_and_goes_on(
        self,
        revision: str,
        service: ReceiptService,
        data_dir: Path,
        registry: UnitRegistry,
        clock: FrozenClock,
        open_db: Callable[..., TillDB],
    ) -> None:
        """A till database with receipts, brought back to an earlier schema, is upgraded
        on open: every receipt and journal event is kept, the journal chain holds, the
        register goes on with the next number, and its DEP export verifies."""
        first = service.issue(sale(request_id="u1"))
        service.issue(sale(request_id="u2", kind="training"))
        service.issue({"request_id": "u3", "register": "KASSE-1", "kind": "storno", "voids": 2})
        service.db.close()

        def contents(db: TillDB) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
            with db.engine.connect() as conn:
                receipts = conn.execute(text("SELECT number, jws, document FROM receipts"))
                journal = conn.execute(text("SELECT seq, hash FROM journal ORDER BY seq"))
                return [tuple(r) for r in receipts], [tuple(j) for j in journal]

        before = contents(open_db(data_dir, writer=False))
        engine = make_engine(data_dir / DB_FILE)
        _downgrade(engine, revision)
        assert current_revision(engine) == revision
        engine.dispose()

        db = open_db(data_dir)
        assert current_revision(db.engine) == head_revision()
        receipts, journal = contents(db)
        # the events before and the upgrade's own (tests/storage/test_migration_event.py)
        assert (receipts, journal[:-1]) == before
        assert [e.kind for e in _events_after(db, len(before[1]))] == [MIGRATED]
        with db.engine.connect() as conn:
            assert verify_journal(conn) == []
        again = ReceiptService(db, registry, clock=clock)
        after = again.issue(sale(request_id="after"))
        assert (first.number, after.number) == (2, 5)
        dep = io.StringIO()
        assert export_dep(db, "KASSE-1", dep) == 5
        container = json.loads(export_container(db, "KASSE-1"))
        report = verify_dep(json.loads(dep.getvalue()), container)
        assert report.ok, report.findings

    def test_a_migration_that_breaks_a_foreign_key_is_rolled_back(self, engine: Engine) -> None:
        """Foreign keys are off while migrations run (so batch mode can rebuild a table
        others point at) and checked before the commit: a dangling reference undoes it."""
        upgrade_to_head(engine)
        with pytest.raises(StorageError, match="foreign keys"), migration(engine) as conn:
            conn.exec_driver_sql(
                "INSERT INTO register_units (register_id, position, unit_id)"
                " VALUES ('NOWHERE', 0, 'none')"
            )
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM register_units").scalar() == 0
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

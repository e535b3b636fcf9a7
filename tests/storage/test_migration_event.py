"""A migration of the till database is journaled and logged (storage/migrate.py): the
operator sees from which schema revision to which, and by which till-agent version."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent import __version__
from agent.errors import StorageError
from agent.receipts import ReceiptService
from factories import sale
from storage import DB_FILE, TillDB, make_engine
from storage.journal import Event, iter_events, verify_journal
from storage.migrate import MIGRATED, current_revision, downgrade_to, head_revision, upgrade_to_head

HEAD = head_revision()
EARLIER = "0005"  # the previous releases' schemas: tests/storage/test_migrations.py has each


@pytest.fixture(name="engine")
def _engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database file, with the till PRAGMAs but no schema."""
    engine = make_engine(tmp_path / DB_FILE)
    yield engine
    engine.dispose()


def _events(engine: Engine) -> list[Event]:
    with engine.connect() as conn:
        return list(iter_events(conn))


def _migrations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "storage.migrate"]


def _at_earlier_revision(service: ReceiptService, data_dir: Path) -> list[Event]:
    """The service's till, with receipts, closed and brought back to EARLIER; its events."""
    service.issue(sale(request_id="m1"))
    service.issue(sale(request_id="m2"))
    service.db.close()
    engine = make_engine(data_dir / DB_FILE)
    try:
        downgrade_to(engine, EARLIER)
        return _events(engine)
    finally:
        engine.dispose()


class TestANewDatabase:
    def test_its_first_event_is_the_migration_that_made_its_schema(
        self, engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An empty database migrated to head: one event (no register) from no revision to
        head by this version, sequence 1 of the chain, and one INFO line saying so."""
        caplog.set_level(logging.INFO, logger="storage.migrate")
        assert upgrade_to_head(engine) == 1
        (event,) = _events(engine)
        assert (event.seq, event.kind, event.register_id) == (1, MIGRATED, None)
        assert json.loads(event.data) == {"from": None, "to": HEAD, "version": __version__}
        (line,) = _migrations(caplog)
        assert f"from schema revision none (empty database) to {HEAD}" in line
        assert f"by till-agent {__version__}" in line
        with engine.connect() as conn:
            assert verify_journal(conn) == []

    def test_an_up_to_date_database_journals_and_logs_nothing(
        self, engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Opening it again migrates nothing: no event, no line."""
        upgrade_to_head(engine)
        before = _events(engine)
        assert [e.kind for e in before] == [MIGRATED]
        caplog.set_level(logging.INFO, logger="storage.migrate")
        assert upgrade_to_head(engine) is None
        assert _events(engine) == before
        assert _migrations(caplog) == []


class TestAnUpgrade:
    def test_a_till_of_an_earlier_schema_journals_its_upgrade(
        self,
        service: ReceiptService,
        data_dir: Path,
        open_db: Callable[..., TillDB],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The writer's open migrates an earlier release's schema: its events stay as they
        were and the next one says from which revision to which, by which version; the
        INFO line names both revisions and the version."""
        before = _at_earlier_revision(service, data_dir)
        caplog.set_level(logging.INFO, logger="storage.migrate")
        db = open_db(data_dir)
        *kept, event = _events(db.engine)
        assert kept == before
        assert (event.seq, event.kind, event.register_id) == (len(before) + 1, MIGRATED, None)
        assert json.loads(event.data) == {"from": EARLIER, "to": HEAD, "version": __version__}
        (line,) = _migrations(caplog)
        assert f"from schema revision {EARLIER} to {HEAD} by till-agent {__version__}" in line
        assert str(db.path) in line
        with db.engine.connect() as conn:
            assert verify_journal(conn) == []

    def test_the_next_start_journals_and_logs_nothing(
        self,
        service: ReceiptService,
        data_dir: Path,
        open_db: Callable[..., TillDB],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Once migrated, a restart of the same version finds nothing to migrate."""
        _at_earlier_revision(service, data_dir)
        db = open_db(data_dir)
        migrated = _events(db.engine)
        assert migrated[-1].kind == MIGRATED
        db.close()
        caplog.set_level(logging.INFO, logger="storage.migrate")
        again = open_db(data_dir)
        assert _events(again.engine) == migrated
        assert _migrations(caplog) == []

    def test_a_failed_migration_leaves_neither_schema_nor_event(
        self, engine: Engine, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The event is in the migration's transaction: a migration that does not commit
        (here its foreign key check fails, after the last step) leaves the revision and
        the journal as they were, and logs nothing; once it can, the next one journals
        it. No crash can leave a migrated schema without its event, or the reverse."""
        upgrade_to_head(engine)
        downgrade_to(engine, EARLIER)
        before = _events(engine)
        path = engine.url.database
        assert path is not None
        with sqlite3.connect(path) as conn:  # foreign keys are off on a plain connection
            conn.execute(
                "INSERT INTO register_units (register_id, position, unit_id)"
                " VALUES ('NOWHERE', 0, 'none')"
            )
        caplog.set_level(logging.INFO, logger="storage.migrate")
        with pytest.raises(StorageError, match="foreign keys"):
            upgrade_to_head(engine)
        assert (current_revision(engine), _events(engine)) == (EARLIER, before)
        assert _migrations(caplog) == []

        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM register_units WHERE register_id = 'NOWHERE'")
        assert upgrade_to_head(engine) == len(before) + 1
        assert json.loads(_events(engine)[-1].data)["from"] == EARLIER
        assert len(_migrations(caplog)) == 1

"""Alembic, driven from code: the till database is always upgraded to head when opened."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from agent import __version__
from storage.errors import StorageError
from storage.journal import append_event

__all__ = [
    "MIGRATED",
    "alembic_config",
    "current_revision",
    "downgrade_to",
    "head_revision",
    "migration",
    "require_head",
    "upgrade_to_head",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# the journal event of a migration: {"from": revision or None (an empty database), "to":
# revision, "version": the till-agent version that migrated}
MIGRATED = "schema.migrated"

_log = logging.getLogger(__name__)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_to_head(engine: Engine, revision: str = "head") -> int | None:
    """Run every pending migration in one ``BEGIN IMMEDIATE`` transaction.

    A migration is journaled (:data:`MIGRATED`, no register) in that transaction, after
    the last migration step: the schema and the event that says so commit together, so
    there is no moment (no crash) with one but not the other; a migration that fails or
    is cut off leaves neither, and the next open migrates and journals it. Once committed
    it is logged at INFO. Nothing is journaled or logged when there was nothing to migrate.

    Returns:
        The event's journal sequence; None when the database was at ``revision`` already.

    Raises:
        StorageError: a later version of till-agent migrated the database (its schema
            revision is not one of ours); it is left as it is.
    """
    config = alembic_config()
    with migration(engine) as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        script = ScriptDirectory.from_config(config)
        if current is not None and current not in _revisions(script):
            raise _later_version(current)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        reached = MigrationContext.configure(conn).get_current_revision()
        if reached == current:
            return None
        seq = _journal_migration(conn, current, reached)
    _log.info(
        "till database %s migrated from schema revision %s to %s by till-agent %s"
        " (journal event %d, %s)",
        engine.url.database,
        current or "none (empty database)",
        reached,
        __version__,
        seq,
        MIGRATED,
    )
    return seq


def _journal_migration(conn: Connection, was: str | None, now: str | None) -> int:
    """The migration's journal event, in its transaction (every revision has the journal:
    the first one creates it). Its time is the wall clock's: nothing is injected into
    opening the database, and no deadline counts from this event."""
    data = {"from": was, "to": now, "version": __version__}
    at = dt.datetime.now(dt.UTC).isoformat()
    return append_event(_raw(conn), kind=MIGRATED, register_id=None, data=data, at=at)


def require_head(revision: str, path: Path) -> None:
    """What a reader checks before it reads: the database has this version's schema. A
    reader does not migrate (it holds no writer lock), and the tables and columns of a
    schema behind ours are not all there.

    Raises:
        StorageError: the database is behind (an earlier version made it and nothing has
            migrated it yet), or ahead (a later version migrated it); it is left as it is.
    """
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if revision == head:
        return
    if revision not in _revisions(script):
        raise _later_version(revision)
    raise StorageError(
        f"the till database {path} has schema revision {revision!r}, not this version's"
        f" {head!r}: it is not migrated yet (an earlier version of till-agent made it)."
        " Start the till service of this version on it (`till-agent run`; under systemd"
        " `systemctl restart till-agent`), which migrates it; so does any command that"
        " writes to the till (`issue`, `special`, `backup run`, ...). This command only"
        " reads, and changed nothing"
    )


def _revisions(script: ScriptDirectory) -> set[str]:
    return {s.revision for s in script.walk_revisions()}


def _later_version(revision: str) -> StorageError:
    return StorageError(
        f"the till database has schema revision {revision!r}, which this version of"
        " till-agent does not know: a later version migrated it. Install that version"
        " (or a later one) again; going back to this one needs the copy of the"
        " database taken before the upgrade"
    )


def downgrade_to(engine: Engine, revision: str) -> None:
    """Undo migrations down to ``revision`` (``base``: no schema), in one transaction."""
    config = alembic_config()
    with migration(engine) as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


@contextmanager
def migration(engine: Engine) -> Iterator[Connection]:
    """One ``BEGIN IMMEDIATE`` transaction with foreign keys off, checked before it commits.

    SQLite's procedure for schema changes (sqlite.org/lang_altertable.html): a table that
    batch mode rebuilds (copy, drop, rename) must not trip the foreign keys of the rows
    that point at it. ``PRAGMA foreign_keys`` only changes outside a transaction.
    """
    with engine.execution_options(sqlite_begin="IMMEDIATE").connect() as conn:
        raw = _raw(conn)
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StorageError(f"a migration broke foreign keys: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def _raw(conn: Connection) -> sqlite3.Connection:
    """The driver's connection under ``conn`` (in its transaction: we own BEGIN)."""
    raw = conn.connection.driver_connection
    if not isinstance(raw, sqlite3.Connection):  # pragma: no cover - SQLite only
        raise StorageError("the till database must be SQLite")
    return raw


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()

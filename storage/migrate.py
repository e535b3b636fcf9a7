"""Alembic, driven from code: the till database is always upgraded to head when opened."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from storage.errors import StorageError

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade_to",
    "head_revision",
    "migration",
    "require_head",
    "upgrade_to_head",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_to_head(engine: Engine, revision: str = "head") -> None:
    """Run every pending migration in one ``BEGIN IMMEDIATE`` transaction.

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
        raw = conn.connection.driver_connection
        if not isinstance(raw, sqlite3.Connection):  # pragma: no cover - SQLite only
            raise StorageError("the till database must be SQLite")
        raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StorageError(f"a migration broke foreign keys: {broken[:5]}")
        finally:
            raw.execute("PRAGMA foreign_keys=ON")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()

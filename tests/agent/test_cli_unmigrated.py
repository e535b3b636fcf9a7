"""Commands that only read, on a till database an earlier version made and nothing has
migrated yet (the new version installed, the service not started on it): they read tables
and columns the old schema lacks, and failed with SQLite's words in a traceback ("no such
column: end_report_due", "no such table: checks"), with ``--json`` nothing on stdout.

A reader does not migrate (it takes no writer lock); it compares the database's schema
revision with this version's and refuses one behind it, saying which revision it is at and
what migrates it; one ahead of it (a later version migrated it) is refused as a writer
refuses it. Either is exit 5, and the database is left as it was."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from factories import Run, expect, flat
from storage import DB_FILE, make_engine
from storage.migrate import alembic_config, downgrade_to, head_revision

OLD = "0003"  # the reviewer's till: made by commit 6bc3a8a

READERS = [
    ("outage", "list"),
    ("outage", "show", "1"),
    ("outage", "export", "1", "-o", "evidence"),
    ("checks", "list"),
    ("backup", "list"),
    ("receipts", "list", "--register", "KASSE-1"),
    ("receipts", "show", "KASSE-1", "2"),
    ("unit", "list"),
    ("export", "dep", "--register", "KASSE-1", "-o", "dep.json"),
    ("export", "crypto-container", "--register", "KASSE-1", "-o", "container.json"),
]


def _revision(till: Path) -> str:
    with sqlite3.connect(till / DB_FILE) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def _back_to(till: Path, revision: str) -> Path:
    engine = make_engine(till / DB_FILE)
    downgrade_to(engine, revision)
    engine.dispose()
    assert _revision(till) == revision
    return till


def _earlier_revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    head = head_revision()
    return sorted(str(s.revision) for s in scripts.walk_revisions() if s.revision != head)


def _in(tmp_path: Path, args: tuple[str, ...]) -> list[str]:
    """Output files of a command are placed in ``tmp_path``."""
    return [
        str(tmp_path / a) if a in ("evidence", "dep.json", "container.json") else a for a in args
    ]


def _says_behind(message: str, revision: str) -> None:
    message = flat(message)
    assert f"schema revision {revision!r}" in message, message
    assert f"{head_revision()!r}" in message, message
    assert "not migrated yet" in message, message
    assert "till-agent run" in message, message
    assert "command that writes" in message, message


class TestBehind:
    @pytest.mark.parametrize("args", READERS, ids=" ".join)
    def test_a_reader_names_the_revision_and_what_migrates_it(
        self, run: Run, till: Path, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        """Exit 5 (the database cannot be used by this version as it is), a message on
        stderr and nothing on stdout; the database keeps its revision."""
        _back_to(till, OLD)
        done = expect(run(*_in(tmp_path, args), "--data-dir", till), 5)
        assert done.stdout == ""
        _says_behind(done.stderr, OLD)
        assert done.exception is None or isinstance(done.exception, SystemExit)
        assert _revision(till) == OLD

    @pytest.mark.parametrize("args", READERS, ids=" ".join)
    def test_with_json_it_is_one_json_error_object(
        self, run: Run, till: Path, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        """``--json``: ``{"error": "StorageError", "message": ...}`` on stdout, as the
        other errors of a command."""
        _back_to(till, OLD)
        done = expect(run(*_in(tmp_path, args), "--data-dir", till, "--json"), 5)
        body = json.loads(done.stdout)
        assert list(body) == ["error", "message"]
        assert body["error"] == "StorageError"
        _says_behind(body["message"], OLD)

    @pytest.mark.parametrize("revision", _earlier_revisions())
    def test_every_earlier_revision_is_named(self, run: Run, till: Path, revision: str) -> None:
        _back_to(till, revision)
        done = expect(run("outage", "list", "--data-dir", till), 5)
        _says_behind(done.stderr, revision)

    def test_a_writing_command_migrates_it_and_then_the_readers_read(
        self, run: Run, till: Path
    ) -> None:
        """What the message says holds: a command that writes (here ``special null``)
        migrates the database, and the reader that was refused then reads it."""
        _back_to(till, OLD)
        expect(run("special", "KASSE-1", "null", "--data-dir", till), 0)
        assert _revision(till) == head_revision()
        for reader in (("checks", "list"), ("backup", "list"), ("outage", "list")):
            listed = expect(run(*reader, "--json", "--data-dir", till), 0).stdout
            assert isinstance(json.loads(listed), list)

    def test_config_check_reports_it_as_unreadable_not_a_traceback(
        self, run: Run, till: Path, tmp_path: Path
    ) -> None:
        """``config check`` looks into the data directory for the register; a database it
        may not read is "cannot be read", as a damaged one."""
        _back_to(till, OLD)
        config = tmp_path / "c.toml"
        config.write_text(f'data_dir = "{till}"\n', encoding="utf-8")
        expect(run("config", "check", "--config", config), 0)
        assert _revision(till) == OLD


class TestAhead:
    def test_a_reader_refuses_a_database_a_later_version_migrated(
        self, run: Run, till: Path
    ) -> None:
        """As a writer does: exit 5 naming the revision, and the database as it was."""
        with sqlite3.connect(till / DB_FILE) as conn:
            conn.execute("UPDATE alembic_version SET version_num = '9999_later'")
        done = expect(run("outage", "list", "--data-dir", till), 5)
        message = flat(done.stderr)
        assert "'9999_later', which this version of till-agent does not know" in message
        assert "a later version migrated it" in message
        body = json.loads(expect(run("backup", "list", "--json", "--data-dir", till), 5).stdout)
        assert "a later version migrated it" in body["message"]
        assert _revision(till) == "9999_later"

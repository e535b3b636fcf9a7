"""Where a till lived, a missing database is restored, never made anew: `run`, `init` and
the other commands that may create it refuse when files show a till was there (the crash
review of restore: a database moved aside by a killed restore became a new KASSE-1 with a
second Startbeleg)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from agent.errors import StorageError
from factories import Run, cli_run, expect, flat
from storage import open_till_db
from storage.db import DB_FILE, LOCK_FILE


@pytest.fixture(name="run")
def _run(monkeypatch: pytest.MonkeyPatch) -> Run:
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return cli_run()


TRACES = {
    "api-token": "api-token",
    "replaced-20260302T100000Z/till.sqlite3": "replaced-20260302T100000Z/",
    f".{DB_FILE}.0123456789ab.tmp": f".{DB_FILE}.0123456789ab.tmp",
    f"{DB_FILE}-wal": f"{DB_FILE}-wal",
    "spool/out/sale-1.json": "spool/out/",
    "prints/KASSE-1-1.bin": "prints/",
    "dep-backups/KASSE-1/KASSE-1_2026-Q1.dep.json": "dep-backups/",
}


class TestLostDatabase:
    @pytest.mark.parametrize("trace", sorted(TRACES))
    def test_a_missing_database_is_not_made_anew_where_a_till_lived(
        self, run: Run, data_dir: Path, trace: str
    ) -> None:
        """No till.sqlite3, but a file that shows a till lived here: `run`, `init` and
        the other commands that may create it refuse (exit 5), naming the file, restore
        and the empty directory a new till starts in; nothing is created."""
        (data_dir / trace).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / trace).write_bytes(b"x")
        with pytest.raises(StorageError) as refused:
            open_till_db(data_dir)
        assert type(refused.value).__name__ == "DatabaseMissing"
        said = str(refused.value)
        assert TRACES[trace] in said
        assert "till-agent restore BACKUP_FILE" in said
        assert "empty data directory" in said
        body = json.loads(
            expect(
                run("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir, "--json"), 5
            ).stdout
        )
        assert body["error"] == "DatabaseMissing"
        unit = ("unit", "create-software", "--id", "k1", "--data-dir", data_dir, "--json")
        expect(run(*unit), 5)
        assert not (data_dir / DB_FILE).exists()
        assert not (data_dir / "keys").exists()

    @pytest.mark.parametrize(
        "found",
        [
            [],
            [LOCK_FILE],
            ["keys/k1.key.pem"],
            ["spool/in/sale-1.json", "spool/out/", "prints/", "dep-backups/"],
        ],
    )
    def test_a_new_till_starts_where_nothing_shows_one(
        self, data_dir: Path, found: list[str]
    ) -> None:
        """A new machine: nothing, a lock file of a refused command, keys laid out
        beforehand, the POS's first sale in the spool, empty directories: created."""
        data_dir.mkdir()
        for name in found:
            path = data_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not name.endswith("/"):
                path.write_bytes(b"x")
        open_till_db(data_dir).close()
        assert (data_dir / DB_FILE).exists()


def _lived(data_dir: Path, traces: list[str]) -> Path:
    """A till database that lived in ``data_dir``, with ``traces`` beside it; closed."""
    open_till_db(data_dir).close()
    for trace in traces:
        (data_dir / trace).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / trace).write_bytes(b"x")
    return data_dir / DB_FILE


def _no_schema(database: Path) -> None:
    """``database`` made an SQLite file with its header and no table (as `sqlite3 FILE
    VACUUM` leaves it)."""
    database.unlink()
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    assert database.stat().st_size > 0


def _refused_as_lost(run: Run, data_dir: Path, shown: str) -> None:
    with pytest.raises(StorageError) as refused:
        open_till_db(data_dir)
    assert type(refused.value).__name__ == "DatabaseMissing"
    assert shown in str(refused.value)
    assert "till-agent restore BACKUP_FILE" in str(refused.value)
    init = ("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir, "--json")
    assert json.loads(expect(run(*init), 5).stdout)["error"] == "DatabaseMissing"
    unit = ("unit", "create-software", "--id", "k1", "--data-dir", data_dir, "--json")
    assert json.loads(expect(run(*unit), 5).stdout)["error"] == "DatabaseMissing"
    assert not (data_dir / "keys").exists()


class TestADatabaseWithoutTheSchemaWhereATillLived:
    """Review F1: `: > till.sqlite3` where a till lived gave `run` a new KASSE-1 and a
    second Startbeleg 1; a file without the till's schema is a missing database."""

    @pytest.mark.parametrize("trace", sorted(TRACES))
    def test_a_0_byte_database_is_not_made_anew(self, run: Run, data_dir: Path, trace: str) -> None:
        """Truncated, its -wal and -shm gone (or its -wal the trace, left as it is: SQLite
        deletes the -wal of a 0-byte database it opens)."""
        database = _lived(data_dir, [trace])
        database.write_bytes(b"")
        _refused_as_lost(run, data_dir, TRACES[trace])
        assert database.stat().st_size == 0
        assert (data_dir / trace).read_bytes() == b"x"

    @pytest.mark.parametrize("trace", sorted(set(TRACES) - {f"{DB_FILE}-wal"}))
    def test_an_sqlite_file_without_tables_is_not_made_anew(
        self, run: Run, data_dir: Path, trace: str
    ) -> None:
        database = _lived(data_dir, [trace])
        _no_schema(database)
        before = database.read_bytes()
        _refused_as_lost(run, data_dir, TRACES[trace])
        assert database.read_bytes() == before

    def test_a_new_till_starts_on_an_empty_file_where_nothing_shows_one(
        self, data_dir: Path
    ) -> None:
        """A 0-byte file alone, and the files of an `init` killed before its schema was
        committed (an SQLite header, an uncommitted -wal, the -shm): its own -wal and -shm
        show no till, what they held was read."""
        data_dir.mkdir()
        (data_dir / DB_FILE).write_bytes(b"")
        open_till_db(data_dir).close()
        killed = data_dir.parent / "killed"
        killed.mkdir()
        with closing(sqlite3.connect(killed / DB_FILE, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
            conn.execute("INSERT INTO alembic_version VALUES ('x')")
            copy = data_dir.parent / "copy"
            shutil.copytree(killed, copy)
        assert sorted(p.name for p in copy.iterdir()) == [
            DB_FILE,
            f"{DB_FILE}-shm",
            f"{DB_FILE}-wal",
        ]
        open_till_db(copy).close()


READERS = [
    ("unit", "list"),
    ("receipts", "list", "--register", "KASSE-1"),
    ("export", "dep", "--register", "KASSE-1", "-o", "{out}"),
]


class TestEveryCommandSaysTheDatabaseIsLost:
    """Review F4: readers said "run `till-agent init` first" (exit 6), and `init` was then
    refused (exit 5): every command names the traces and restore."""

    @pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
    @pytest.mark.parametrize("lost", ["removed", "0 bytes"])
    def test_a_reader_names_the_traces(
        self, run: Run, data_dir: Path, tmp_path: Path, command: tuple[str, ...], lost: str
    ) -> None:
        database = _lived(data_dir, ["api-token"])
        if lost == "removed":
            database.unlink()
        else:
            database.write_bytes(b"")
        args = [a.format(out=tmp_path / "out.json") for a in command]
        body = json.loads(expect(run(*args, "--data-dir", data_dir, "--json"), 5).stdout)
        assert body["error"] == "DatabaseMissing"
        assert "api-token" in body["message"]
        assert "till-agent restore BACKUP_FILE" in body["message"]
        assert not (tmp_path / "out.json").exists()


class TestConfigCheckOnALostDatabase:
    """Review F5: `config check` called a lost database "invalid configuration", exit 3;
    it is the data directory's refusal, exit 5 as every command's."""

    @pytest.mark.parametrize("lost", ["removed", "0 bytes"])
    def test_config_check_says_data_directory_and_exits_5(
        self, run: Run, data_dir: Path, tmp_path: Path, lost: str
    ) -> None:
        database = _lived(data_dir, ["prints/KASSE-1-1.bin"])
        if lost == "removed":
            database.unlink()
        else:
            database.write_bytes(b"")
        config = tmp_path / "till.toml"
        config.write_text(f'data_dir = "{data_dir}"\n', encoding="utf-8")
        checked = expect(run("config", "check", "--config", config), 5)
        said = flat(checked.stderr)
        assert said.startswith("data directory: there is no till database in")
        assert "prints/" in said
        assert "invalid configuration" not in said
        body = json.loads(expect(run("config", "check", "--config", config, "--json"), 5).stdout)
        assert body["error"] == "DatabaseMissing"
        assert "configuration" not in body


class TestALinkToNoFile:
    """``till.sqlite3`` linked to a disk that is not mounted: SQLite made a new database at
    the empty mount point, and `run` a new KASSE-1 with a second Startbeleg under the same
    Kassen-ID."""

    @pytest.fixture(name="linked")
    def _linked(self, data_dir: Path, tmp_path: Path) -> Path:
        mount = tmp_path / "mnt"  # the mount point, its disk not mounted
        mount.mkdir()
        data_dir.mkdir()
        (data_dir / DB_FILE).symlink_to(mount / DB_FILE)
        return mount

    def test_no_command_makes_a_database_through_it(
        self, run: Run, data_dir: Path, linked: Path
    ) -> None:
        with pytest.raises(StorageError) as refused:
            open_till_db(data_dir)
        assert type(refused.value).__name__ == "DatabaseMissing"
        said = str(refused.value)
        assert f"is a symbolic link to {linked / DB_FILE}, which does not exist" in said
        assert "mounted" in said
        init = ("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir, "--json")
        body = json.loads(expect(run(*init), 5).stdout)
        assert body["error"] == "DatabaseMissing"
        assert "symbolic link" in body["message"]
        unit = ("unit", "create-software", "--id", "k1", "--data-dir", data_dir, "--json")
        expect(run(*unit), 5)
        assert list(linked.iterdir()) == []
        assert not (data_dir / "keys").exists()

    def test_a_reading_command_says_why_too(self, run: Run, data_dir: Path, linked: Path) -> None:
        shown = ("receipts", "list", "--register", "KASSE-1", "--data-dir", data_dir, "--json")
        listed = expect(run(*shown), 6)
        assert "symbolic link" in json.loads(listed.stdout)["message"]
        assert list(linked.iterdir()) == []

    def test_the_mounted_disk_opens(self, data_dir: Path, linked: Path) -> None:
        open_till_db(linked).close()  # the till's database, made on its disk
        (linked / LOCK_FILE).unlink()
        open_till_db(data_dir).close()
        assert (data_dir / DB_FILE).resolve() == (linked / DB_FILE).resolve()

    def test_config_check_says_so(
        self, run: Run, data_dir: Path, linked: Path, tmp_path: Path
    ) -> None:
        config = tmp_path / "till.toml"
        config.write_text(f'data_dir = "{data_dir}"\n', encoding="utf-8")
        said = flat(expect(run("config", "check", "--config", config), 5).stderr)
        assert said.startswith(f"data directory: {data_dir / DB_FILE} is a symbolic link")
        assert list(linked.iterdir()) == []

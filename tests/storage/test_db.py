"""The till database's durability recipe (storage/db.py): PRAGMAs, BEGIN, lock, quick_check."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from smallfs import fill_up, small_tmpfs
from sqlalchemy import text

from agent.errors import DataDirLocked, NoDatabase, NotFound, StorageError
from agent.receipts import ReceiptService
from factories import run_threads, sale
from storage import DB_FILE, TillDB, open_till_db
from storage.db import LOCK_FILE

PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": 2,  # FULL
    "busy_timeout": 5000,
    "foreign_keys": 1,
}


def _pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}


def _try_begin_immediate(path: Path) -> str:
    """Try to take the write lock from a second connection without waiting: 'ok' or the error."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        other.close()
    return "ok"


def _open_in_subprocess(data_dir: Path, *, writer: bool = True) -> str:
    """Open the till database in a fresh interpreter; the name of the error, or 'opened'."""
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from storage import open_till_db
        try:
            open_till_db(Path({str(data_dir)!r}), writer={writer!r}).close()
        except Exception as exc:
            print(type(exc).__name__, exc)
        else:
            print("opened")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


class TestConnectionPragmas:
    def test_every_reader_connection_runs_wal_full_busy_timeout_and_foreign_keys(
        self, db: TillDB
    ) -> None:
        """Each pooled connection, not only the first, is set up with all four PRAGMAs."""
        with db.engine.connect() as first, db.engine.connect() as second:
            for conn in (first, second):
                raw = conn.connection.driver_connection
                assert isinstance(raw, sqlite3.Connection)
                assert _pragmas(raw) == PRAGMAS

    def test_writer_connections_run_the_same_pragmas(self, db: TillDB) -> None:
        """The writer engine's connections are just as durable as the readers'."""
        with db.writer.begin() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            assert _pragmas(raw) == PRAGMAS

    def test_the_database_file_is_in_wal_mode_for_other_processes_too(self, db: TillDB) -> None:
        """WAL is persistent in the file, so any other tool opening it sees WAL."""
        conn = sqlite3.connect(db.path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


class TestBegin:
    def test_writer_transactions_take_the_write_lock_at_begin(self, db: TillDB) -> None:
        """``db.writer`` starts with BEGIN IMMEDIATE: it locks out other writers at once."""
        with db.writer.begin() as conn:
            conn.execute(text("SELECT 1"))
            assert "locked" in _try_begin_immediate(db.path)
        assert _try_begin_immediate(db.path) == "ok"

    def test_the_write_connection_takes_the_write_lock_at_begin(self, db: TillDB) -> None:
        """The receipt path's single write connection also starts with BEGIN IMMEDIATE."""
        with db.write_connection().transaction():
            assert "locked" in _try_begin_immediate(db.path)
        assert _try_begin_immediate(db.path) == "ok"

    def test_the_write_connection_counts_and_times_its_commits(self, db: TillDB) -> None:
        """Committed transactions are counted and timed (the benchmark reads it); a rolled
        back one is not a commit."""
        writer = db.write_connection()
        before = writer.commits
        for _ in range(3):
            with writer.transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
                conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError), writer.transaction() as conn:
            conn.execute("INSERT INTO no_such_table VALUES (2)")  # rolled back
        assert writer.commits == before + 3
        assert writer.commit_seconds > 0

    def test_a_non_durable_write_skips_only_its_own_fsync(self, db: TillDB) -> None:
        """``durable=False`` commits with synchronous=NORMAL and puts FULL back, also when
        it fails; a durable write cannot join it, while it may join a durable one."""
        writer = db.write_connection()

        def level(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        with writer.transaction(durable=False) as conn:
            assert level(conn) == 1
            conn.execute("CREATE TABLE t (v INTEGER)")
        assert level(conn) == 2
        with pytest.raises(sqlite3.OperationalError), writer.transaction(durable=False) as conn:
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        assert level(conn) == 2
        with (
            pytest.raises(StorageError, match="durable"),
            writer.transaction(durable=False),
            writer.transaction(),
        ):
            pass  # pragma: no cover - refused on entry
        with writer.transaction() as conn, writer.transaction(durable=False) as inner:
            assert level(inner) == 2  # joins the durable transaction
            inner.execute("INSERT INTO t VALUES (1)")
        with db.engine.connect() as reader:
            assert reader.execute(text("SELECT count(*) FROM t")).scalar() == 1

    def test_every_way_out_of_a_write_transaction_frees_the_writer(self, db: TillDB) -> None:
        """A commit, a failure, a refused join and a failed BEGIN each leave the writer free
        for another thread, with nothing open and the durable level back."""
        writer = db.write_connection()
        with writer.transaction() as conn:
            conn.execute("CREATE TABLE t (v INTEGER)")

        def another_thread_writes() -> None:
            done: list[bool] = []

            def write() -> None:
                with writer.transaction() as conn:
                    conn.execute("INSERT INTO t VALUES (0)")
                done.append(True)

            thread = threading.Thread(target=write)
            thread.start()
            thread.join(10)
            assert done == [True]
            assert not writer._conn.in_transaction
            assert int(writer._conn.execute("PRAGMA synchronous").fetchone()[0]) == 2

        another_thread_writes()

        def fails() -> None:
            with writer.transaction(durable=False) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("the block fails")

        with pytest.raises(RuntimeError):
            fails()
        another_thread_writes()
        with (
            pytest.raises(StorageError, match="durable"),
            writer.transaction(durable=False),
            writer.transaction(),
        ):
            pass  # pragma: no cover - refused on entry
        another_thread_writes()
        writer._conn.execute("BEGIN")  # BEGIN IMMEDIATE then fails: one is open already
        with pytest.raises(StorageError, match="cannot start"), writer.transaction():
            pass  # pragma: no cover - refused on entry
        writer._conn.execute("ROLLBACK")
        another_thread_writes()
        with db.engine.connect() as reader:
            assert reader.execute(text("SELECT v FROM t")).scalars().all() == [0, 0, 0, 0]

    def test_commit_so_far_makes_the_work_durable_and_keeps_the_savepoints(
        self, db: TillDB
    ) -> None:
        """What came before commit_so_far stays when the transaction then fails; a savepoint
        opened before it is open again, and rolling back to it undoes only later work."""
        writer = db.write_connection()
        with writer.transaction() as conn:
            conn.execute("CREATE TABLE t (v INTEGER)")

        def fails_after_the_commit() -> None:
            with writer.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
                with writer.savepoint("piece"):
                    conn.execute("INSERT INTO t VALUES (2)")
                    writer.commit_so_far()
                    conn.execute("INSERT INTO t VALUES (3)")
                    conn.execute("ROLLBACK TO piece")
                conn.execute("INSERT INTO t VALUES (4)")
                raise RuntimeError("the transaction fails after the commit")

        with pytest.raises(RuntimeError):
            fails_after_the_commit()
        with db.engine.connect() as reader:
            assert reader.execute(text("SELECT v FROM t ORDER BY v")).scalars().all() == [1, 2]

    def test_commit_so_far_needs_an_open_durable_transaction(self, db: TillDB) -> None:
        writer = db.write_connection()
        with pytest.raises(StorageError, match="durable transaction"):
            writer.commit_so_far()
        with pytest.raises(StorageError), writer.transaction(durable=False):
            writer.commit_so_far()

    def test_read_modify_write_through_the_writer_loses_no_update(self, db: TillDB) -> None:
        """Four threads incrementing one row through ``db.writer`` never collide or lose a step."""
        with db.writer.begin() as conn:
            conn.execute(text("CREATE TABLE scratch (n INTEGER NOT NULL)"))
            conn.execute(text("INSERT INTO scratch VALUES (0)"))
        errors: list[BaseException] = []

        def bump() -> None:
            try:
                for _ in range(50):
                    with db.writer.begin() as conn:
                        n = conn.execute(text("SELECT n FROM scratch")).scalar_one()
                        conn.execute(text("UPDATE scratch SET n = :n"), {"n": n + 1})
            except BaseException as exc:  # reported below
                errors.append(exc)

        workers = [threading.Thread(target=bump) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert errors == []
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM scratch")).scalar_one() == 200

    def test_reader_transactions_are_deferred(self, db: TillDB) -> None:
        """``db.engine`` transactions start deferred and block no writer."""
        with db.engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM journal"))
            assert _try_begin_immediate(db.path) == "ok"

    def test_concurrent_services_allocate_gap_free_numbers(
        self, service: ReceiptService, query: Callable[..., list[sqlite3.Row]]
    ) -> None:
        """Four threads with a service each, 50 sales apiece: numbers 1..201, no gap, no dupe."""
        threads, per_thread = 4, 50
        services = [
            ReceiptService(service.db, service.units, clock=service.clock) for _ in range(threads)
        ]
        numbers: list[int] = []

        def sell(worker: int) -> None:
            for i in range(per_thread):
                result = services[worker].issue(sale(request_id=f"t{worker}-{i}"))
                numbers.append(result.number)

        run_threads(threads, sell, timeout=120)
        assert sorted(numbers) == list(range(2, 2 + threads * per_thread))
        stored = [r["number"] for r in query("SELECT number FROM receipts ORDER BY number")]
        assert stored == list(range(1, 2 + threads * per_thread))
        (reg,) = query("SELECT last_number FROM registers WHERE id = 'KASSE-1'")
        assert reg["last_number"] == 1 + threads * per_thread


class TestWriterLock:
    @pytest.fixture(name="held")
    def _held(self, data_dir: Path) -> Iterator[TillDB]:
        db = open_till_db(data_dir)
        yield db
        db.close()

    def test_a_second_writer_process_is_refused(self, held: TillDB, data_dir: Path) -> None:
        """While one process holds the data directory, another writer gets DataDirLocked."""
        outcome = _open_in_subprocess(data_dir)
        assert outcome.startswith(DataDirLocked.__name__)
        assert LOCK_FILE in outcome

    def test_a_second_writer_in_the_same_process_is_refused(
        self, held: TillDB, data_dir: Path
    ) -> None:
        """The lock is per open file, so even this process cannot open a second writer."""
        with pytest.raises(DataDirLocked, match="another till-agent process"):
            open_till_db(data_dir)

    def test_a_reader_may_open_while_the_writer_holds_the_lock(
        self, held: TillDB, data_dir: Path
    ) -> None:
        """Read-only tools (writer=False) do not need the lock."""
        assert _open_in_subprocess(data_dir, writer=False) == "opened"

    def test_the_lock_is_released_on_close(self, held: TillDB, data_dir: Path) -> None:
        """After close, another process can become the writer."""
        held.close()
        assert _open_in_subprocess(data_dir) == "opened"

    def test_the_lock_file_names_the_holder(self, held: TillDB, data_dir: Path) -> None:
        """The lock file holds the writer's pid, for the operator who wonders who has it."""
        assert (data_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"

    def test_a_refused_writer_leaves_the_holder_working(self, held: TillDB, data_dir: Path) -> None:
        """A failed second open does not release or damage the first writer's lock."""
        with pytest.raises(DataDirLocked):
            open_till_db(data_dir)
        assert _open_in_subprocess(data_dir).startswith(DataDirLocked.__name__)

    def test_a_reader_needs_an_existing_database(self, tmp_path: Path) -> None:
        """writer=False never creates a database (nor its directory); it says how to make one."""
        with pytest.raises(StorageError, match="till-agent init"):
            open_till_db(tmp_path / "empty", writer=False)
        assert not (tmp_path / "empty").exists()


class TestDataDirectory:
    def test_a_new_till_is_private(self, tmp_path: Path) -> None:
        """The database holds the AES keys: a new data directory is 0700, the database
        and its WAL 0600 whatever the umask allows."""
        data_dir = tmp_path / "new" / "data"
        db = open_till_db(data_dir)
        try:
            with db.write_connection().transaction() as conn:
                conn.execute("INSERT INTO journal VALUES (NULL, 'at', NULL, 'k', 'd', 'p', 'h')")
            assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
            for name in (DB_FILE, DB_FILE + "-wal"):
                assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
        finally:
            db.close()

    def test_an_existing_database_keeps_its_mode(self, tmp_path: Path) -> None:
        """Only new files are made private: a backup job may read an existing one."""
        open_till_db(tmp_path).close()
        (tmp_path / DB_FILE).chmod(0o640)
        open_till_db(tmp_path).close()
        assert stat.S_IMODE((tmp_path / DB_FILE).stat().st_mode) == 0o640

    def test_create_false_refuses_a_missing_database_and_creates_nothing(
        self, tmp_path: Path
    ) -> None:
        """A mistyped --data-dir is not a new till: nothing is created, and it is NotFound."""
        with pytest.raises(NoDatabase, match="till-agent init") as caught:
            open_till_db(tmp_path / "typo", create=False)
        assert isinstance(caught.value, NotFound)
        assert not (tmp_path / "typo").exists()

    def test_a_data_dir_that_is_a_file(self, tmp_path: Path) -> None:
        """A StorageError naming the path, not FileExistsError."""
        (tmp_path / "file").write_text("x")
        with pytest.raises(StorageError, match="is not a directory"):
            open_till_db(tmp_path / "file")

    def test_a_nul_byte_in_the_data_dir(self, tmp_path: Path) -> None:
        """A StorageError, not ValueError (a NUL can come from the configuration)."""
        with pytest.raises(StorageError, match="NUL"):
            open_till_db(Path(f"{tmp_path}/a\x00b"))

    def test_a_file_that_is_not_a_database_reads_as_sqlite_says(self, tmp_path: Path) -> None:
        """The message is SQLite's, without SQLAlchemy's wrapping or its web link."""
        (tmp_path / DB_FILE).write_bytes(b"this is not a database" * 500)
        with pytest.raises(StorageError) as caught:
            open_till_db(tmp_path)
        message = str(caught.value)
        assert "file is not a database" in message
        assert "sqlalche" not in message
        assert "(sqlite3." not in message


def _corrupt(source: TillDB, target_dir: Path, offset_of: Callable[[int, int], int]) -> Path:
    """Copy the database file and overwrite 4 KiB of the copy at ``offset_of(size, page)``."""
    target_dir.mkdir()
    copy = target_dir / DB_FILE
    shutil.copyfile(source.path, copy)
    size = copy.stat().st_size
    with copy.open("r+b") as handle:
        handle.seek(offset_of(size, 4096))
        handle.write(b"\xff" * 4096)
    return copy


class TestQuickCheck:
    @pytest.fixture(name="filled")
    def _filled(self, data_dir: Path) -> TillDB:
        """A closed (checkpointed) database of about 130 pages, most of them journal rows."""
        db = open_till_db(data_dir)
        with db.writer.begin() as conn:
            for _ in range(2000):  # after the new database's schema.migrated event
                conn.execute(
                    text("INSERT INTO journal VALUES (NULL, 'at', NULL, 'k', :data, 'p', 'h')"),
                    {"data": "x" * 200},
                )
        db.close()
        return db

    def test_an_intact_database_passes(
        self, filled: TillDB, open_db: Callable[..., TillDB]
    ) -> None:
        """The undamaged original opens without complaint."""
        assert open_db(filled.path.parent).path == filled.path

    def test_garbage_inside_a_page_raises_storage_error(
        self, filled: TillDB, tmp_path: Path
    ) -> None:
        """Bytes overwritten in the middle of the file are found by quick_check at open."""
        _corrupt(filled, tmp_path / "bad", lambda size, _page: size // 2)
        # found by quick_check, or earlier when opening reads the damaged page
        with pytest.raises(StorageError, match=r"quick_check|malformed"):
            open_till_db(tmp_path / "bad")

    def test_a_destroyed_page_header_raises_storage_error(
        self, filled: TillDB, tmp_path: Path
    ) -> None:
        """A page overwritten from its start (SQLite reports the corruption) is a StorageError."""
        _corrupt(filled, tmp_path / "bad", lambda size, page: (size // page // 2) * page)
        try:
            open_till_db(tmp_path / "bad").close()
        except StorageError:
            return
        except Exception as exc:
            raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
        raise AssertionError("the damaged database opened")

    def test_a_destroyed_file_header_raises_storage_error(
        self, filled: TillDB, tmp_path: Path
    ) -> None:
        """A file whose header is gone is reported as StorageError, not a SQLAlchemy error."""
        _corrupt(filled, tmp_path / "bad", lambda _size, _page: 0)
        try:
            open_till_db(tmp_path / "bad").close()
        except StorageError:
            return
        except Exception as exc:
            raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
        raise AssertionError("the damaged database opened")

    def test_a_failed_open_releases_the_lock(self, filled: TillDB, tmp_path: Path) -> None:
        """After a corrupt database was refused, the lock is free again (nothing holds it)."""
        _corrupt(filled, tmp_path / "bad", lambda size, _page: size // 2)
        with pytest.raises(StorageError):
            open_till_db(tmp_path / "bad")
        assert not _open_in_subprocess(tmp_path / "bad").startswith(DataDirLocked.__name__)


@pytest.fixture(name="small_fs")
def _small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (:func:`smallfs.small_tmpfs`)."""
    with small_tmpfs(tmp_path, "1m") as mount:
        yield mount


class TestFullDisk:
    def test_an_existing_till_on_a_full_disk_says_the_disk_is_full(self, small_fs: Path) -> None:
        """SQLite reports a -shm it cannot grow as "disk I/O error": the message names the
        full disk, the data directory and its free space instead."""
        data_dir = small_fs / "data"
        open_till_db(data_dir).close()
        fill_up(small_fs)
        with pytest.raises(StorageError) as raised:
            open_till_db(data_dir)
        message = str(raised.value)
        assert f"the disk is full (0 KiB free in {data_dir}" in message, message
        with pytest.raises(StorageError, match="the disk is full"):
            open_till_db(data_dir, writer=False)  # `receipts list` and the like

    def test_a_new_till_on_a_full_disk_says_the_disk_is_full(self, small_fs: Path) -> None:
        data_dir = small_fs / "data"
        fill_up(small_fs)
        with pytest.raises(StorageError, match=r"the disk is full \(0 KiB free in "):
            open_till_db(data_dir)

    def test_an_io_error_with_room_to_spare_is_not_a_full_disk(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Only a nearly full file system turns SQLite's I/O error into "the disk is full"."""
        open_till_db(data_dir).close()

        def failing_check(_engine: object) -> None:
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
            raise error

        monkeypatch.setattr("storage.db._quick_check", failing_check)
        if os.statvfs(data_dir).f_bavail * os.statvfs(data_dir).f_frsize < (1 << 20):
            pytest.skip("the test file system itself is nearly full")
        with pytest.raises(StorageError) as raised:
            open_till_db(data_dir)
        assert str(raised.value).endswith(": disk I/O error")

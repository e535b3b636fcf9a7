"""The till database: SQLite through SQLAlchemy 2 with the durability recipe of A3.

* WAL with ``synchronous=FULL``: a commit is on disk before the receipt is shown.
* ``isolation_level=None`` on the driver and our own ``BEGIN``: writers use
  ``BEGIN IMMEDIATE`` (the ``writer`` engine), readers a deferred ``BEGIN``.
* ``busy_timeout`` so a second connection waits instead of failing.
* ``PRAGMA quick_check`` and Alembic ``upgrade head`` when the database is opened (a
  reader, which does not migrate, refuses a schema revision other than head).
* One writer process per data directory, enforced with an ``flock`` on ``agent.lock``.
* Nothing opens it while a restore is unfinished (``restore.pending``), and a missing
  database is not created anew where files show that a till lived (:func:`till_traces`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import ConnectionPoolEntry

from storage.errors import (
    DatabaseMissing,
    DataDirLocked,
    NoDatabase,
    RestorePending,
    StorageError,
)
from storage.writer import WriteConnection

__all__ = [
    "DB_FILE",
    "RESTORE_MARKER",
    "TillDB",
    "data_dir_problem",
    "make_engine",
    "open_till_db",
    "till_traces",
]

DB_FILE = "till.sqlite3"
LOCK_FILE = "agent.lock"
# written by `till-agent restore` before it moves the database aside, removed once the
# restored one has its name (agent/restore.py)
RESTORE_MARKER = "restore.pending"
# what `run` writes beside the database (the defaults under the data directory: the spool's
# POS side, in/, is not the till's); files there tell that a till lived in the directory
_RUN_FILES = {"api-token": "the local API's token, `run` wrote it"}
_TRACE_DIRS = ("spool/work", "spool/out", "spool/failed", "prints", "dep-backups")
# below this much free space an I/O error while opening is the full disk: SQLite reports a
# -shm it cannot grow to 32 KiB as SQLITE_IOERR_SHMSIZE ("disk I/O error"), not SQLITE_FULL
DISK_FULL_BYTES = 1 << 20


def make_engine(path: Path, *, synchronous: str = "FULL") -> Engine:
    """An engine whose connections run WAL, the given ``synchronous`` and our own BEGIN."""
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"timeout": 5.0, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _rec: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # we own BEGIN (see reference/libraries.md A3)
        for pragma in (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={synchronous}",
            "PRAGMA busy_timeout=5000",
            "PRAGMA foreign_keys=ON",
        ):
            dbapi_conn.execute(pragma)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@dataclass
class TillDB:
    """An open till database: a reader engine, a writer engine and (if a writer) the lock.

    ``writer`` is an engine whose transactions start with ``BEGIN IMMEDIATE``;
    :meth:`write_connection` is the single raw connection the receipt path writes through.
    """

    path: Path
    engine: Engine
    writer: Engine
    _lock_fd: int | None = field(default=None, repr=False)
    _write_conn: WriteConnection | None = field(default=None, repr=False)

    def write_connection(self) -> WriteConnection:
        if self._write_conn is None:
            self._write_conn = WriteConnection(self.engine)
        return self._write_conn

    @contextmanager
    def read_connection(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot on a pooled reader connection, rows as ``sqlite3.Row``.

        A deferred transaction in WAL never waits for the writer and never blocks it:
        status pages, the printer and the probe read here, not on the write connection.
        """
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            if not isinstance(raw, sqlite3.Connection):  # pragma: no cover - SQLite only
                raise StorageError("the till database must be SQLite")
            raw.row_factory = sqlite3.Row
            try:
                yield raw
            finally:
                raw.row_factory = None

    def close(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _acquire_lock(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise DataDirLocked(
            f"another till-agent process is writing to {data_dir} (lock {LOCK_FILE})"
        ) from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _quick_check(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        raise StorageError(f"the till database failed PRAGMA quick_check: {rows[:5]}")


def open_till_db(
    data_dir: Path, *, writer: bool = True, migrate: bool = True, create: bool = True
) -> TillDB:
    """Open (and create or migrate) the till database in ``data_dir``.

    A new data directory is private (0700) and so is a new database file (0600): it
    holds the registers' AES keys.

    Args:
        data_dir: the data directory; a writer creates it if missing.
        writer: take the one-writer lock; read-only tools pass ``False``.
        migrate: run Alembic ``upgrade head`` (only done by a writer).
        create: a writer may create the database; commands that only make sense on an
            existing till pass ``False`` (a mistyped directory is not a new till), and
            then an empty file (no till schema yet) is no till database either.

    Raises:
        NoDatabase: there is no database (or an empty one, without the till's schema) and
            this call may not create one.
        RestorePending: a restore into ``data_dir`` did not finish (``restore.pending``).
        DatabaseMissing: there is no database (no file, a 0-byte one, or an SQLite file
            without tables), and files in ``data_dir`` show that a till lived there
            (:func:`till_traces`): it would be a new one under the old id. Said to every
            caller, a reader too, before NoDatabase. Also ``till.sqlite3`` as a link to no
            file (a disk not mounted), to callers that may create one (the others get
            NoDatabase saying so): SQLite would make the new one at the link's target.
        DataDirLocked: another process holds the writer lock.
        StorageError: the database is damaged or cannot be opened, or the data
            directory cannot be used (not a directory, read-only, no permission); or, not
            migrated here, its schema revision is not this version's (behind: not
            migrated yet; ahead: a later version migrated it).
    """
    if "\x00" in str(data_dir):
        raise StorageError(f"the data directory {str(data_dir)!r} contains a NUL byte")
    path = data_dir / DB_FILE
    # before the lock: a refused data directory or file gets no lock file
    _refuse_to_open(
        data_dir,
        may_create=writer and create,
        may_be_empty=create,
        at_head=not (writer and migrate),
    )
    try:
        if writer:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _acquire_lock(data_dir) if writer else None
    except OSError as exc:
        raise StorageError(
            f"cannot use the data directory {data_dir}: {_reason(exc, data_dir)}"
        ) from exc
    try:
        if writer:  # a restore killed since the look above: its marker is there now
            _refuse_pending_restore(data_dir)
        if writer:
            _create_private(path)
        engine = make_engine(path)
        _quick_check(engine)
        if writer and migrate:
            from storage.migrate import upgrade_to_head

            upgrade_to_head(engine)
    except (sqlite3.DatabaseError, sqlalchemy.exc.DatabaseError, OSError) as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        raise StorageError(
            f"cannot open the till database {path}: {_reason(exc, data_dir)}"
        ) from exc
    except Exception:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    return TillDB(path, engine, engine.execution_options(sqlite_begin="IMMEDIATE"), lock_fd)


def _refuse_to_open(data_dir: Path, *, may_create: bool, may_be_empty: bool, at_head: bool) -> None:
    """What open_till_db refuses before it touches anything (see there): no database
    unless ``may_create``, a file without the till's schema unless ``may_be_empty``. A
    file without the schema where a till lived is refused as a missing one, to every
    caller: a 0-byte file is not opened (SQLite would delete a -wal beside it)."""
    path = data_dir / DB_FILE
    if data_dir.exists() and not data_dir.is_dir():  # before "run init": init refuses it too
        raise StorageError(f"the data directory {data_dir} is not a directory")
    _refuse_pending_restore(data_dir)
    if os.path.lexists(path) and not path.exists():  # SQLite would make a new one at its target
        raise (DatabaseMissing if may_create else NoDatabase)(_dangling(path))
    state = _schema_state(path, data_dir, at_head=at_head)
    if state == "till":
        return
    if lost := _lost_database(data_dir, state):
        raise lost
    if state == "none":
        if not may_create:
            raise NoDatabase(_no_database(data_dir))
        return
    if not may_be_empty:
        raise NoDatabase(
            f"no till database in {data_dir} yet ({DB_FILE} holds no till schema): run"
            " `till-agent init` first"
        )


def _dangling(path: Path) -> str:
    """Why a link ``path`` to no file is not opened: SQLite would create the database at
    its target (a disk that is not mounted leaves its mount point empty)."""
    target = os.readlink(path)
    return (
        f"{path} is a symbolic link to {target}, which does not exist (is the disk it is on"
        " mounted?): the till database is not opened through it, since a new one made"
        " there would be a new register under the same Kassen-ID while the old receipts"
        " are elsewhere; nothing was created. Mount the disk (or put the link right); for a"
        " new till, remove the link and start on an empty data directory"
    )


def _no_database(data_dir: Path) -> str:
    return f"no till database in {data_dir}: run `till-agent init` first"


def _lost_database(data_dir: Path, state: str) -> DatabaseMissing | None:
    """DatabaseMissing naming the traces of a till in ``data_dir``, whose database file is
    missing or without the till's schema (``state``, from :func:`_schema_state`); None if
    nothing shows a till lived there. The -wal, -shm and -journal of an SQLite file that
    was opened and holds no tables show nothing: what they held was read (an ``init``
    killed before its schema was committed leaves them)."""
    traces = till_traces(data_dir)
    if state == "no schema":
        traces = [t for t in traces if not t.startswith(f"{DB_FILE}-")]
    shown = {"empty": f" ({DB_FILE} is 0 bytes)", "no schema": f" ({DB_FILE} has no tables)"}
    return DatabaseMissing(_missing(data_dir, traces, shown.get(state, ""))) if traces else None


def data_dir_problem(data_dir: Path) -> StorageError | None:
    """What keeps ``run`` from opening (or creating) the till database in ``data_dir``
    beyond the database itself: an unfinished restore, or a database missing (or without
    the till's schema) where a till lived; None if neither (for `config check`)."""
    try:
        _refuse_pending_restore(data_dir)
    except RestorePending as exc:
        return exc
    path = data_dir / DB_FILE
    if not data_dir.is_dir():
        return None
    if os.path.lexists(path) and not path.exists():
        return DatabaseMissing(_dangling(path))
    try:
        state = _schema_state(path, data_dir, at_head=False)
    except StorageError:  # not a till database, or unreadable: the database's own problem
        return None
    return None if state == "till" else _lost_database(data_dir, state)


def _refuse_pending_restore(data_dir: Path) -> None:
    marker = data_dir / RESTORE_MARKER
    if not os.path.lexists(marker):
        return
    backup = _pending_backup(marker)
    shown = "BACKUP_FILE" if backup is None else shlex.quote(backup)
    said = "" if backup is None else f" (of {backup})"
    raise RestorePending(
        f"a restore into {data_dir}{said} did not finish: {marker} records it, and the till"
        " database is not opened until it is finished or undone. Finish it with the same"
        f" backup (no --yes needed): `till-agent restore {shown} --data-dir"
        f" {shlex.quote(str(data_dir))}`; or put back the database it replaced: `till-agent"
        f" restore --abandon --data-dir {shlex.quote(str(data_dir))}` (README.md, Operations,"
        " Restore)"
    )


def _pending_backup(marker: Path) -> str | None:
    """The backup a restore marker names, or None if it cannot be read."""
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
        return str(found["backup"]["path"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def till_traces(data_dir: Path) -> list[str]:
    """The files in ``data_dir`` (which has no ``till.sqlite3``) that show a till lived
    there: the database's own -wal, -shm or -journal, a restore's copy or the directory
    of the database it replaced, and what `run` writes (the API token; answered spool
    files, printed jobs and DEP backups under their default directories)."""
    try:
        names = sorted(p.name for p in data_dir.iterdir())
    except OSError:  # no directory (a new till), or one that cannot be read: open says so
        return []
    found = [f"{n} (the database's own file)" for n in names if n.startswith(f"{DB_FILE}-")]
    found += [f"{n}/ (where a restore moved a database aside)" for n in names if _replaced(n)]
    found += [f"{n} (a restore's copy)" for n in names if _restore_copy(n)]
    found += [f"{name} ({what})" for name, what in _RUN_FILES.items() if name in names]
    found += [f"{d}/ (files `run` wrote)" for d in _TRACE_DIRS if _has_files(data_dir / d)]
    return found


def _replaced(name: str) -> bool:
    return name.startswith("replaced-")


def _restore_copy(name: str) -> bool:
    return name.startswith(f".{DB_FILE}.") and ".tmp" in name


def _has_files(directory: Path) -> bool:
    try:
        return any(p.is_file() for p in directory.rglob("*"))
    except OSError:
        return False


def _missing(data_dir: Path, traces: list[str], why: str = "") -> str:
    return (
        f"there is no till database in {data_dir}{why}, but a till lived there: "
        f"{'; '.join(traces)}. A new database here would be a new register under the same"
        " Kassen-ID, its receipt numbers and Startbeleg starting again, while the old"
        " receipts are on paper; nothing was created. Restore the database (`till-agent"
        " restore BACKUP_FILE`, README.md, Operations, Restore; a database a restore moved"
        " aside is in replaced-*/). For a new till, start on an empty data directory"
    )


def _schema_state(path: Path, data_dir: Path, *, at_head: bool) -> str:
    """Whether ``path`` holds the till's schema (Alembic's revision), looked at before it
    is opened as a till database, which would switch it to WAL and (a writer) migrate it:
    ``"till"``; ``"none"`` (no file), ``"empty"`` (0 bytes, not opened) or ``"no schema"``
    (an SQLite file without tables, or without a revision): no till database yet. A file
    with tables of its own is no till database at all, and is left as it is. One that
    will not be migrated (``at_head``: a reader) must have this version's schema.

    Raises:
        StorageError: tables but no ``alembic_version``; or not an SQLite file; or
            ``at_head`` and another schema revision (storage.migrate.require_head).
    """
    try:
        if path.stat().st_size == 0:
            return "empty"
    except OSError:  # as path.exists(): a directory it cannot look into is said later
        return "none"
    try:
        with closing(sqlite3.connect(path, timeout=5.0)) as conn:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            versioned = "alembic_version" in names
            row = versioned and conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"cannot open the till database {path}: {_reason(exc, data_dir)}"
        ) from exc
    if row:
        if at_head:
            from storage.migrate import require_head

            require_head(str(row[0]), path)
        return "till"
    if names and not versioned:
        shown = ", ".join(sorted(names)[:5])
        raise StorageError(
            f"{path} is not a till database: it holds other tables ({shown}) and no till-agent"
            " schema; it is left as it is (is this the till's data directory?)"
        )
    return "no schema"


def _create_private(path: Path) -> None:
    """Create an empty database file with mode 0600 (SQLite would make it 0644 and give
    its WAL the same mode); an existing file keeps its mode. Under the writer lock."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    from agent.durable import fsync_directory

    fsync_directory(path.parent)


def _reason(exc: BaseException, data_dir: Path) -> str:
    """The cause without SQLAlchemy's wrapping ("(sqlite3.DatabaseError) ...", a link);
    a full disk is called that, with the free space of the data directory's file system."""
    original = getattr(exc, "orig", None)
    if isinstance(original, BaseException):
        exc = original
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror[:1].lower() + exc.strerror[1:]
    else:
        reason = str(exc)
    free = _free_bytes(data_dir)
    if _is_disk_full(exc, free):
        shown = "unknown" if free is None else f"{free // 1024} KiB"
        return f"the disk is full ({shown} free in {data_dir}; {reason})"
    return reason


def _is_disk_full(exc: BaseException, free: int | None) -> bool:
    """ENOSPC/EDQUOT or SQLITE_FULL; or an I/O error with less than DISK_FULL_BYTES free."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    io_error = (isinstance(exc, OSError) and exc.errno == errno.EIO) or (
        isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_IOERR
    )
    return io_error and free is not None and free < DISK_FULL_BYTES


def _free_bytes(data_dir: Path) -> int | None:
    """The space an unprivileged writer has left where ``data_dir`` is (or would be)."""
    for where in (data_dir, *data_dir.parents):
        try:
            usage = os.statvfs(where)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return usage.f_bavail * usage.f_frsize
    return None


def table_names(engine: Engine) -> list[str]:
    """Names of the user tables (for tests and diagnostics)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).all()
    return sorted(str(r[0]) for r in rows)

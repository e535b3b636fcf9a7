"""The one write connection of a till process.

All writes go through a single raw SQLite connection guarded by a lock, each in its own
``BEGIN IMMEDIATE`` transaction (huey's ``SqliteStorage`` and reference/libraries.md A3
reach the same design). The receipt hot path uses plain SQL on it: SQLAlchemy Core
compiles and caches statements per call, which cost more than the fsync itself here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from sqlalchemy import Engine

from storage.errors import StorageError

__all__ = ["COMMIT_BUCKETS_S", "NOTHING_STORED", "WriteConnection", "storage_failure"]

# the upper bounds, in seconds, of the durable commits' latency histogram (GET /metrics):
# an fsync on an SSD takes about a millisecond, on an SD card up to hundreds
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# how a failed transaction's StorageError ends: true since its last commit_so_far only
NOTHING_STORED = "; nothing of it was stored"


class WriteConnection:
    """A dedicated connection (with the engine's PRAGMAs) for ``BEGIN IMMEDIATE`` writes."""

    def __init__(self, engine: Engine) -> None:
        self._pooled = engine.raw_connection()
        raw = self._pooled.driver_connection
        if not isinstance(raw, sqlite3.Connection):  # pragma: no cover - SQLite only
            raise StorageError("the till database must be SQLite")
        raw.row_factory = sqlite3.Row
        self._conn = raw
        self._lock = threading.RLock()
        self._depth = 0
        self._durable = True
        self._savepoints: list[str] = []  # open in the transaction, innermost last
        self._synchronous = int(raw.execute("PRAGMA synchronous").fetchone()[0])
        # what the commits cost (each an fsync with synchronous=FULL): benchmarks read it,
        # and a group commit counts the commit_so_far of each of its pieces by it
        self.commits = 0
        self.commit_seconds = 0.0
        # the durable commits only (fsync'd with synchronous=FULL), by COMMIT_BUCKETS_S;
        # the last count is of those slower than every bound
        self.durable_buckets = [0] * (len(COMMIT_BUCKETS_S) + 1)
        self.durable_seconds = 0.0

    def transaction(self, *, durable: bool = True) -> _Transaction:
        """One write transaction; commits (fsync with synchronous=FULL) or rolls back.

        ``durable=False`` is for bookkeeping that may be lost with power (never a receipt
        or a journal event): it commits with ``synchronous=NORMAL``, without an fsync of its
        own. WAL keeps the order, so the next durable commit makes it durable too; a power
        cut before that loses it whole, never a part of it.

        Nested use from the same thread joins the outer transaction; a durable one cannot
        join a transaction that is not.
        """
        return _Transaction(self, durable)

    @contextmanager
    def savepoint(self, name: str) -> Iterator[sqlite3.Connection]:
        """``SAVEPOINT name`` in the open transaction, released when the block exits normally.

        The block undoes its work with ``ROLLBACK TO name`` itself. Unlike a plain
        SAVEPOINT statement, this one survives :meth:`commit_so_far`, which opens it again.
        """
        self._conn.execute(f"SAVEPOINT {name}")
        self._savepoints.append(name)
        try:
            yield self._conn
        finally:
            self._savepoints.pop()
        self._conn.execute(f"RELEASE {name}")

    def commit_so_far(self) -> None:
        """Commit (fsync) what the open transaction wrote so far and go on in a new one.

        For a record that must be durable before something leaves the process while the
        transaction is still open (a request to a chain service). The open savepoints are
        opened again, so a ``ROLLBACK TO`` afterwards undoes only what came after this.

        Raises:
            StorageError: no durable transaction is open, or the commit failed.
        """
        with self._lock:
            if not self._depth or not self._durable:
                raise StorageError("commit_so_far needs an open durable transaction")
            self._commit()
            self._begin()
            for name in self._savepoints:
                self._conn.execute(f"SAVEPOINT {name}")

    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"cannot start a write transaction: {exc}") from exc

    def _commit(self) -> None:
        start = time.perf_counter()
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            failure = storage_failure(exc) or f"the commit failed: {exc}"
            raise StorageError(failure + NOTHING_STORED) from exc
        took = time.perf_counter() - start
        self.commit_seconds += took
        self.commits += 1
        if self._durable:  # under the lock: a list item and a float, no more
            self.durable_buckets[bisect_left(COMMIT_BUCKETS_S, took)] += 1
            self.durable_seconds += took

    def _rollback(self) -> None:
        """Undo the open transaction; SQLite has already undone it after some errors
        (a full disk, an I/O error), and a second ROLLBACK would hide the real one."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._pooled.close()


class _Transaction:
    """The block of :meth:`WriteConnection.transaction`, holding the writer's lock from
    ``__enter__`` to ``__exit__`` (a class, not a generator: the receipt path opens one per
    receipt, and a generator's context manager costs three times as much)."""

    __slots__ = ("_durable", "_joined", "_writer")

    def __init__(self, writer: WriteConnection, durable: bool) -> None:
        self._writer = writer
        self._durable = durable
        self._joined = False

    def __enter__(self) -> sqlite3.Connection:
        writer, durable = self._writer, self._durable
        writer._lock.acquire()
        try:
            if writer._depth:
                if durable and not writer._durable:
                    raise StorageError("a durable write cannot join a non-durable transaction")
                writer._depth += 1
                self._joined = True
                return writer._conn
            if not durable:  # the level cannot change inside a transaction
                writer._conn.execute(f"PRAGMA synchronous={min(1, writer._synchronous)}")
            try:
                writer._begin()
            except BaseException:
                self._restore_level()
                raise
            writer._depth, writer._durable = 1, durable
            return writer._conn
        except BaseException:
            writer._lock.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        writer = self._writer
        try:
            if self._joined:
                writer._depth -= 1
                return
            try:
                writer._depth = 0
                if exc is None:
                    writer._commit()
                    return
                writer._savepoints.clear()
                writer._rollback()
                if isinstance(exc, sqlite3.Error) and (failure := storage_failure(exc)):
                    raise StorageError(failure + NOTHING_STORED) from exc
            finally:
                self._restore_level()
        finally:
            writer._lock.release()

    def _restore_level(self) -> None:
        if not self._durable:
            self._writer._conn.execute(f"PRAGMA synchronous={self._writer._synchronous}")
        self._writer._durable = True


# primary result codes where the database failed, not the statement (sqlite.org/rescode.html)
_FAILURES = {
    sqlite3.SQLITE_BUSY: "the till database is busy",
    sqlite3.SQLITE_LOCKED: "the till database is locked",
    sqlite3.SQLITE_NOMEM: "SQLite ran out of memory",
    sqlite3.SQLITE_READONLY: "the till database is read-only",
    sqlite3.SQLITE_IOERR: "the till database's disk failed (I/O error)",
    sqlite3.SQLITE_CORRUPT: "the till database is damaged",
    sqlite3.SQLITE_FULL: "the till database cannot grow: the disk is full",
    sqlite3.SQLITE_CANTOPEN: "the till database cannot be opened",
    sqlite3.SQLITE_NOTADB: "the till database file is not a database",
}


def storage_failure(exc: sqlite3.Error) -> str | None:
    """What failed, when ``exc`` is the database's failure rather than a statement's."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    cause = _FAILURES.get(code & 0xFF)
    return None if cause is None else f"{cause} ({exc})"

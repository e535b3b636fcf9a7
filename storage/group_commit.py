"""Group commit: concurrent writers share one transaction, and so one fsync.

A caller hands :meth:`GroupCommit.run` a piece of work (a function of the open write
connection). The caller that finds nobody leading becomes the leader: it takes the
writer, runs every piece queued so far in one transaction, each in its own savepoint
when there are several (a refused piece is rolled back alone), commits once and hands
each caller its result. The others wait on their own slot until a leader has committed
their work, or hands one of them the lead. A caller that finds nobody leading and the
writer free (one POS) runs its work at once, as a group of one. Nothing is returned
before the commit.

A piece may commit the group so far itself (``commit_so_far``, e.g. a chain unit's
signing intent): the pieces before it are durable then, and are answered with their
results even when the group fails afterwards. The piece that committed gets
:class:`PartlyCommitted`, and the pieces after it the group's failure.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from storage.errors import StorageError
from storage.writer import NOTHING_STORED

__all__ = ["GroupCommit", "PartlyCommitted"]

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]


class PartlyCommitted(StorageError):
    """The group failed after this caller's own work committed it so far (``commit_so_far``):
    what the work wrote before that commit is stored, what it wrote after it is not.

    Attributes:
        error: what failed the group (also the ``__cause__``).
        failure: what failed, in words (without "nothing of it was stored", which is
            true of the pieces after this one only).
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.failure = str(error).removesuffix(NOTHING_STORED) or type(error).__name__
        super().__init__(
            f"{self.failure}; what this work wrote before its early commit is stored,"
            " the rest of it is not"
        )
        self.__cause__ = error


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True, eq=False)
class _Slot(Generic[T]):
    """One caller's piece of work.

    ``wake`` is held from the start; the leader releases it when the work is done or when
    it hands the lead to this caller (then ``done`` is still false and ``lead`` true).
    """

    work: Work[T]
    result: T | None = None
    error: BaseException | None = None
    done: bool = False
    committed: bool = False  # the work committed the group so far (commit_so_far)
    lead: bool = False  # this caller runs the next group (set under the queue lock)
    wake: threading.Lock = field(default_factory=_held_lock)


class GroupCommit(Generic[T]):
    """Runs pieces of work from many threads in shared write transactions.

    Args:
        writer: held by the leader while it runs a group; the owner's other writes
            take it too, so a group never interleaves with them.
        transaction: opens the write transaction a group runs in (commits on exit).
        savepoint: opens a named savepoint in it (released when its block ends), e.g.
            :meth:`storage.writer.WriteConnection.savepoint`.
        contained: the exceptions that refuse one piece of a group without failing the
            others; they must be raised before the piece changed anything outside the
            database (work a piece committed early with ``commit_so_far``, a chain
            unit's signing intent, stays committed). Any other exception fails the
            whole group.
        commits: how many transactions the writer has committed so far
            (:attr:`storage.writer.WriteConnection.commits`): a piece during which it
            grows has committed the group so far.
    """

    def __init__(
        self,
        writer: threading.RLock,
        transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
        savepoint: Callable[[str], AbstractContextManager[sqlite3.Connection]],
        contained: tuple[type[Exception], ...],
        commits: Callable[[], int],
    ) -> None:
        self._writer = writer
        self._transaction = transaction
        self._savepoint = savepoint
        self._contained = contained
        self._commits = commits
        self._queue_lock = threading.Lock()
        self._queue: list[_Slot[T]] = []
        self._leading = False  # a caller is running (or about to run) the next group

    @property
    def queued(self) -> int:
        """How many pieces of work wait for a group (a snapshot, read without the lock so
        that a signal handler may ask)."""
        return len(self._queue)

    def run(self, work: Work[T]) -> T:
        """Run ``work`` in a transaction shared with whoever is waiting; its committed result.

        Raises:
            PartlyCommitted: the group failed after ``work`` committed it so far.
            whatever ``work`` raised, or what failed the group's transaction (then
            nothing of ``work`` was committed).
        """
        slot: _Slot[T] = _Slot(work)
        if self._lead_alone():  # a group of one, with nobody to queue behind or wake
            try:
                self._run_slots([slot])
            finally:
                self._writer.release()
                with self._queue_lock:
                    self._pass_lead()
        else:
            try:
                with self._queue_lock:
                    self._queue.append(slot)
                    follow, self._leading = self._leading, True
                    slot.lead = not follow
                if follow:
                    slot.wake.acquire()  # done by a leader, or the lead is handed to us
                if not slot.done:
                    self._lead()
            except BaseException:  # interrupted (a signal in the main thread) while queued
                self._abandon(slot)
                raise
        if slot.error is not None:
            raise slot.error
        return cast(T, slot.result)  # set by the group, and None only when work returned it

    def _lead_alone(self) -> bool:
        """Take the lead and the writer when nobody leads and the writer is free (the
        common till: one POS): the caller then runs its work as a group of one, without
        queueing its slot and waiting to be woken. Callers that come meanwhile queue for
        the next group, as they would behind a group that has started."""
        with self._queue_lock:
            if self._leading or not self._writer.acquire(blocking=False):
                return False
            self._leading = True
            return True

    def _lead(self) -> None:
        """Run one group, then hand the lead to the first caller queued meanwhile.

        Followers wait on their own slot, not on the writer: a finished group wakes its
        callers at once instead of one after the other through the lock.
        """
        try:
            with self._writer:
                self._run_group()
        finally:
            with self._queue_lock:
                self._pass_lead()

    def _pass_lead(self) -> None:
        """Hand the lead to the first queued caller, or end it (holding the queue lock)."""
        if self._queue:
            self._queue[0].lead = True
            self._queue[0].wake.release()
        else:
            self._leading = False

    def _abandon(self, slot: _Slot[T]) -> None:
        """Take an interrupted caller's work out of the queue before any group runs it.

        Work a group has taken is committed or failed as usual; nobody waits for its
        answer. A caller that held (or was just handed) the lead passes it on, or every
        later caller would queue behind a leader that never comes.
        """
        with self._queue_lock:
            if slot in self._queue:  # identity: slots do not compare by value
                self._queue.remove(slot)
                if slot.lead:
                    self._pass_lead()

    def _run_group(self) -> None:
        with self._queue_lock:
            group, self._queue = self._queue, []
        self._run_slots(group)

    def _run_slots(self, group: list[_Slot[T]]) -> None:
        """Run ``group`` in one transaction and answer each of its slots."""
        try:
            with self._transaction() as conn:
                for slot in group:
                    self._run_piece(conn, slot, alone=len(group) == 1)
        except BaseException as exc:  # nothing since the last commit_so_far was committed
            _fail(group, exc)
        finally:
            for slot in group:
                slot.done = True
                slot.wake.release()

    def _run_piece(self, conn: sqlite3.Connection, slot: _Slot[T], *, alone: bool) -> None:
        """Run one piece of the group, noting whether it committed the group so far."""
        before = self._commits()
        try:
            if alone:  # nothing to keep apart from it: no savepoint, a refusal rolls back
                self._run_alone(conn, slot)
            else:
                self._run_in_savepoint(conn, slot)
        finally:
            slot.committed = self._commits() != before

    def _run_alone(self, conn: sqlite3.Connection, slot: _Slot[T]) -> None:
        try:
            slot.result = slot.work(conn)
        except self._contained as exc:
            slot.error = exc  # its own answer, even after a commit_so_far
            raise

    def _run_in_savepoint(self, conn: sqlite3.Connection, slot: _Slot[T]) -> None:
        """Run one piece of a group; a contained refusal is undone without the others."""
        with self._savepoint("piece"):
            try:
                slot.result = slot.work(conn)
            except self._contained as exc:
                conn.execute("ROLLBACK TO piece")
                slot.error = exc


def _fail(group: list[_Slot[T]], exc: BaseException) -> None:
    """Hand ``exc``, which failed the group's transaction, to each piece it undid.

    The last piece that committed the group so far made every piece before it durable:
    their answers (results or refusals) stand, whatever came after. That piece gets
    :class:`PartlyCommitted` (unless ``exc`` ends the process, as ``KeyboardInterrupt``
    does: that goes on as it is); a piece refused on its own keeps its refusal.
    """
    last = max((i for i, slot in enumerate(group) if slot.committed), default=-1)
    for i, slot in enumerate(group):
        if i < last or slot.error is not None:
            continue
        slot.result = None
        if i == last and isinstance(exc, Exception):
            slot.error = PartlyCommitted(exc)
        else:
            slot.error = exc

"""GroupCommit on its own: a plain SQLite file, a slowed commit so that groups form; and on
the real write connection, whose ``commit_so_far`` makes a part of a group durable."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage.db import make_engine
from storage.errors import StorageError
from storage.group_commit import GroupCommit, PartlyCommitted
from storage.writer import NOTHING_STORED, WriteConnection


class Refused(Exception):
    """A refusal that stays with its piece of work."""


class Store:
    """One write connection whose commits are slowed and counted."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
        self.path = path
        self.commits = 0
        self.lock = threading.RLock()
        self.group: GroupCommit[int] = GroupCommit(
            self.lock, self.transaction, self.savepoint, (Refused,), lambda: self.commits
        )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            time.sleep(0.01)  # callers pile up behind the commit
            self.conn.execute("COMMIT")
            self.commits += 1

    @contextmanager
    def savepoint(self, name: str) -> Iterator[sqlite3.Connection]:
        self.conn.execute(f"SAVEPOINT {name}")
        yield self.conn
        self.conn.execute(f"RELEASE {name}")

    def stored(self) -> list[int]:
        with sqlite3.connect(self.path) as reader:
            return [n for (n,) in reader.execute("SELECT n FROM t ORDER BY n")]


def insert(n: int) -> Callable[[sqlite3.Connection], int]:
    """Inserts ``n``; refuses every multiple of 5 after its insert (which must not stay)."""

    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        if n % 5 == 0:
            raise Refused(n)
        return n

    return work


def run_all(store: Store, numbers: list[int]) -> dict[int, object]:
    """Each number from its own thread; the result or the exception of each."""
    outcome: dict[int, object] = {}
    early: list[int] = []
    start = threading.Barrier(len(numbers))

    def caller(n: int) -> None:
        start.wait()
        try:
            outcome[n] = store.group.run(insert(n))
        except Refused as exc:
            outcome[n] = exc
        if isinstance(outcome[n], int) and n not in store.stored():
            early.append(n)

    threads = [threading.Thread(target=caller, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not early, f"answered before their commit: {early}"
    return outcome


def test_concurrent_callers_share_commits_and_a_refusal_stays_with_its_piece(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "g.sqlite3")
    numbers = list(range(1, 25))
    outcome = run_all(store, numbers)
    refused = [n for n in numbers if n % 5 == 0]
    assert {n for n, o in outcome.items() if isinstance(o, Refused)} == set(refused)
    assert {n: o for n, o in outcome.items() if n not in refused} == {
        n: n for n in numbers if n not in refused
    }
    assert store.stored() == [n for n in numbers if n not in refused]
    assert store.commits < len(numbers), "no group formed: every piece had its own commit"
    assert store.group.queued == 0


def test_a_failing_piece_fails_its_whole_group_and_nothing_of_it_commits(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "g.sqlite3")
    running, gate = threading.Event(), threading.Event()

    def first(conn: sqlite3.Connection) -> int:
        running.set()  # the leader has taken its group (of one) and holds the writer
        gate.wait(10)  # ... until the others are queued
        conn.execute("INSERT INTO t VALUES (1)")
        return 1

    leader = threading.Thread(target=store.group.run, args=(first,))
    leader.start()
    assert running.wait(10)

    def broken(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("disk on fire")

    results: dict[str, object] = {}

    def call(name: str, work: Callable[[sqlite3.Connection], int]) -> None:
        try:
            results[name] = store.group.run(work)
        except RuntimeError as exc:
            results[name] = exc

    followers = [
        threading.Thread(target=call, args=("good", insert(2))),
        threading.Thread(target=call, args=("broken", broken)),
    ]
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + 10
    while store.group.queued < 2:
        assert time.monotonic() < deadline, "the followers never queued"
        time.sleep(0.001)
    gate.set()
    leader.join(10)
    for thread in followers:
        thread.join(10)
    assert isinstance(results["broken"], RuntimeError)
    assert isinstance(results["good"], RuntimeError), "a piece of a failed group was answered"
    assert store.stored() == [1]
    assert store.group.run(insert(2)) == 2  # the writer is free again: nothing hangs
    assert store.stored() == [1, 2]


@pytest.mark.parametrize("pieces", [1, 3])
def test_an_answer_is_the_work_s_own_result(tmp_path: Path, pieces: int) -> None:
    store = Store(tmp_path / "g.sqlite3")
    outcome = run_all(store, [11 * (i + 1) for i in range(pieces)])
    assert outcome == {11 * (i + 1): 11 * (i + 1) for i in range(pieces)}


def test_work_that_returns_none_is_answered_none(tmp_path: Path) -> None:
    """The group is generic: None is a result like any other, not a missing one."""
    store = Store(tmp_path / "g.sqlite3")
    nothing: GroupCommit[None] = GroupCommit(
        store.lock, store.transaction, store.savepoint, (Refused,), lambda: store.commits
    )
    assert nothing.run(lambda conn: None) is None
    assert store.commits == 1


# -- a piece that commits the group so far (WriteConnection.commit_so_far) -----------------


class Durable:
    """GroupCommit on the real :class:`WriteConnection` of a database file, as the receipt
    service builds it; a deferred foreign key lets a piece make the final COMMIT fail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = make_engine(path)
        self.writer = WriteConnection(self.engine)
        with self.writer.transaction() as conn:
            conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE child (parent INTEGER"
                " REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        self.lock = threading.RLock()
        self.group: GroupCommit[int] = GroupCommit(
            self.lock,
            self.writer.transaction,
            self.writer.savepoint,
            (Refused,),
            lambda: self.writer.commits,
        )

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()

    def stored(self) -> list[int]:
        """The rows of ``t``, read from the file by a connection of its own (a reopening)."""
        reader = sqlite3.connect(self.path)
        try:
            return [n for (n,) in reader.execute("SELECT n FROM t ORDER BY n")]
        finally:
            reader.close()

    def one_group(self, works: list[Callable[[sqlite3.Connection], int]]) -> list[object]:
        """Run ``works`` from a thread each as one group, in this order: the result or the
        exception each caller got."""
        outcome: list[object] = [None] * len(works)

        def call(i: int) -> None:
            try:
                outcome[i] = self.group.run(works[i])
            except Exception as exc:  # the answer under test
                outcome[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(works))]
        with self.lock:  # the first caller leads, and waits for the writer with its group
            for queued, thread in enumerate(threads, start=1):
                thread.start()
                deadline = time.monotonic() + 10
                while self.group.queued < queued:
                    assert time.monotonic() < deadline, f"caller {queued} never queued"
                    time.sleep(0.001)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), "a caller never got its answer"
        return outcome


@pytest.fixture(name="durable")
def _durable(tmp_path: Path) -> Iterator[Durable]:
    durable = Durable(tmp_path / "d.sqlite3")
    yield durable
    durable.close()


def early(
    durable: Durable, n: int, *, then_fail: bool = False, then_refuse: bool = False
) -> Callable[[sqlite3.Connection], int]:
    """Inserts ``n``, commits the group so far, then inserts ``n + 1000`` (which stays only if
    the group commits); ``then_fail``: also an orphan row that fails the final COMMIT;
    ``then_refuse``: then refuses (as a chain signing voided after its intent)."""

    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        durable.writer.commit_so_far()
        conn.execute("INSERT INTO t VALUES (?)", (n + 1000,))
        if then_fail:
            conn.execute("INSERT INTO child VALUES (?)", (n,))
        if then_refuse:
            raise Refused(n)
        return n

    return work


def orphan(n: int) -> Callable[[sqlite3.Connection], int]:
    """Inserts ``n`` and a row whose parent is missing: the group's COMMIT fails."""

    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        conn.execute("INSERT INTO child VALUES (?)", (n,))
        return n

    return work


def broken(n: int) -> Callable[[sqlite3.Connection], int]:
    """Inserts ``n``, then fails with an exception that fails the whole group."""

    def work(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        raise RuntimeError(f"piece {n} broke")

    return work


class TestAFailureAfterACommitSoFar:
    def test_the_pieces_it_made_durable_get_their_results_when_the_commit_fails(
        self, durable: Durable
    ) -> None:
        """A piece commits the group so far, a later piece makes the final COMMIT fail: the
        pieces before the commit are answered (results, a refusal), the committing piece
        is told what of it is stored, the later ones that nothing is; the file agrees."""
        outcome = durable.one_group(
            [insert(1), insert(5), insert(2), early(durable, 3), insert(4), orphan(6)]
        )
        assert outcome[:3] == [1, outcome[1], 2]
        assert isinstance(outcome[1], Refused)
        partly, after = outcome[3], outcome[4:]
        assert isinstance(partly, PartlyCommitted)
        assert "FOREIGN KEY constraint failed" in str(partly)
        assert NOTHING_STORED not in str(partly)
        assert isinstance(partly.error, StorageError)
        assert partly.__cause__ is partly.error
        for told in after:
            assert isinstance(told, StorageError)
            assert not isinstance(told, PartlyCommitted)
            assert str(told).endswith(NOTHING_STORED)
        assert durable.stored() == [1, 2, 3]  # 3's work after its commit (1003) is undone
        assert durable.group.run(insert(7)) == 7  # the writer goes on
        assert durable.stored() == [1, 2, 3, 7]

    def test_a_later_piece_that_breaks_leaves_the_answers_before_the_last_commit(
        self, durable: Durable
    ) -> None:
        """Two pieces commit the group so far and a later one raises: everything before the
        second commit is answered, the second committing piece gets PartlyCommitted with
        the exception as its cause, the rest the exception itself."""
        outcome = durable.one_group(
            [insert(1), early(durable, 2), early(durable, 3), broken(4), insert(6)]
        )
        assert outcome[:2] == [1, 2]
        partly = outcome[2]
        assert isinstance(partly, PartlyCommitted)
        assert isinstance(partly.error, RuntimeError)
        assert str(partly).startswith("piece 4 broke; ")
        assert outcome[3] is partly.error
        assert outcome[4] is partly.error
        assert durable.stored() == [1, 2, 3, 1002]

    def test_a_group_that_fails_before_any_commit_so_far_answers_nobody(
        self, durable: Durable
    ) -> None:
        """Without an early commit nothing of the group is stored, and every caller is told so."""
        outcome = durable.one_group([insert(1), insert(2), orphan(3)])
        assert all(isinstance(o, StorageError) for o in outcome)
        assert not any(isinstance(o, PartlyCommitted) for o in outcome)
        assert durable.stored() == []

    def test_a_piece_refused_after_its_commit_so_far_keeps_its_refusal(
        self, durable: Durable
    ) -> None:
        """A contained refusal after the piece's own early commit (a voided intent) is the
        piece's answer, also when the group fails afterwards."""
        outcome = durable.one_group([insert(1), early(durable, 2, then_refuse=True), orphan(3)])
        assert outcome[0] == 1
        assert isinstance(outcome[1], Refused)
        assert isinstance(outcome[2], StorageError)
        assert durable.stored() == [1, 2]


class TestOnePieceAlone:
    def test_a_piece_whose_commit_fails_after_its_commit_so_far_is_told_what_is_stored(
        self, durable: Durable
    ) -> None:
        """A group of one (no savepoint): the final COMMIT fails after the piece committed
        a part of it, and the caller learns that part is stored."""
        with pytest.raises(PartlyCommitted, match="FOREIGN KEY") as raised:
            durable.group.run(early(durable, 1, then_fail=True))
        assert NOTHING_STORED not in str(raised.value)
        assert durable.stored() == [1]

    def test_a_piece_refused_after_its_commit_so_far_gets_its_refusal(
        self, durable: Durable
    ) -> None:
        with pytest.raises(Refused):
            durable.group.run(early(durable, 1, then_refuse=True))
        assert durable.stored() == [1]

    def test_a_piece_that_ends_the_process_after_its_commit_so_far_is_not_wrapped(
        self, durable: Durable
    ) -> None:
        """An exception that ends the process (KeyboardInterrupt, SystemExit) goes on as it
        is: only a failure the caller answers becomes PartlyCommitted."""

        def ends(conn: sqlite3.Connection) -> int:
            early(durable, 1)(conn)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            durable.group.run(ends)
        assert durable.stored() == [1]

    def test_a_piece_that_fails_with_no_commit_so_far_gets_the_failure(
        self, durable: Durable
    ) -> None:
        with pytest.raises(StorageError, match="nothing of it was stored") as raised:
            durable.group.run(orphan(1))
        assert not isinstance(raised.value, PartlyCommitted)
        assert durable.stored() == []

    @pytest.mark.parametrize(
        "scenario", ["result", "refused", "fails", "partly", "refused_after_commit"]
    )
    def test_a_caller_alone_is_answered_as_a_queued_group_of_one(
        self, tmp_path: Path, scenario: str
    ) -> None:
        """A caller that finds the writer free runs its work without queueing a slot: its
        answer and what is stored are those of the same work queued behind a busy writer."""

        def work(durable: Durable) -> Callable[[sqlite3.Connection], int]:
            return {
                "result": insert(1),
                "refused": insert(5),
                "fails": orphan(1),
                "partly": early(durable, 1, then_fail=True),
                "refused_after_commit": early(durable, 1, then_refuse=True),
            }[scenario]

        answers, stored = [], []
        for route in ("alone", "queued"):
            durable = Durable(tmp_path / f"{route}.sqlite3")
            try:
                if route == "queued":
                    answer = durable.one_group([work(durable)])[0]
                else:
                    try:
                        answer = durable.group.run(work(durable))
                    except Exception as exc:  # the answer under test
                        answer = exc
                answers.append(answer if isinstance(answer, int) else repr(answer))
                stored.append(durable.stored())
                assert durable.group.run(insert(7)) == 7  # the lead was handed back
            finally:
                durable.close()
        assert answers[0] == answers[1]
        assert stored[0] == stored[1]

"""GroupCommit on its own: a plain SQLite file, a slowed commit so that groups form."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage.group_commit import GroupCommit


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
            self.lock, self.transaction, self.savepoint, (Refused,)
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
        store.lock, store.transaction, store.savepoint, (Refused,)
    )
    assert nothing.run(lambda conn: None) is None
    assert store.commits == 1

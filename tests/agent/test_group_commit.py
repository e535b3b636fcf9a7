"""Group commit: concurrent callers of one service share commits, never an early answer.

The commit is slowed down so that callers pile up behind it and groups really form; each
test counts the commits to show that they did.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Query

from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import InvalidSale
from agent.receipts import ReceiptService
from agent.signing.registry import UnitRegistry
from factories import db_rows, run_threads, sale
from storage import TillDB
from storage.errors import StorageError
from storage.writer import NOTHING_STORED

THREADS, PER_THREAD = 6, 20


@dataclass
class Commits:
    """The commits of the service's writer, in order: ``"ok"`` or ``"failed"``."""

    log: list[str] = field(default_factory=list)
    fail_first: bool = False


@pytest.fixture(name="commits")
def _commits(service: ReceiptService, monkeypatch: pytest.MonkeyPatch) -> Commits:
    """Slows every commit of the service's writer by 3 ms and logs it."""
    writer = service._issuing.writer  # the one place a commit can be slowed down
    real = writer._commit
    commits = Commits()

    def slow_commit() -> None:
        time.sleep(0.003)
        if commits.fail_first and not commits.log:
            commits.log.append("failed")
            writer._conn.execute("ROLLBACK")  # as a failed COMMIT does
            raise StorageError("the commit failed: disk I/O error (injected)")
        real()
        commits.log.append("ok")

    monkeypatch.setattr(writer, "_commit", slow_commit)
    return commits


def _visible(query: Query, result: ReceiptResult) -> bool:
    rows = query(
        "SELECT 1 FROM receipts WHERE register_id = ? AND number = ?",
        result.register_id,
        result.number,
    )
    return len(rows) == 1


class TestGroupCommit:
    def test_callers_share_commits_and_each_answer_is_already_durable(
        self, service: ReceiptService, commits: Commits, query: Query
    ) -> None:
        """6 threads x 20 sales on one service: fewer commits than sales, numbers gap-free,
        and every receipt is committed (a separate reader sees it) when its caller returns."""
        numbers: list[int] = []
        early: list[int] = []

        def sell(worker: int) -> None:
            for i in range(PER_THREAD):
                result = service.issue(sale(request_id=f"t{worker}-{i}"))
                if not _visible(query, result):
                    early.append(result.number)
                numbers.append(result.number)

        run_threads(THREADS, sell)
        total = THREADS * PER_THREAD
        assert early == []
        assert sorted(numbers) == list(range(2, 2 + total))
        assert len(commits.log) < total * 0.75, f"no groups formed: {len(commits.log)} commits"
        stored = [r["number"] for r in query("SELECT number FROM receipts ORDER BY number")]
        assert stored == list(range(1, 2 + total))

    def test_a_refused_sale_in_a_group_is_undone_alone(
        self, service: ReceiptService, commits: Commits, query: Query
    ) -> None:
        """Every third sale voids a receipt that does not exist: it is refused inside the
        group, the others of its group are issued, and no number is lost."""
        refused: list[str] = []
        numbers: list[int] = []

        def sell(worker: int) -> None:
            for i in range(PER_THREAD):
                extra: dict[str, Any] = {}
                if i % 3 == 0:
                    extra = {"kind": "storno", "voids": 9999, "lines": [], "payments": []}
                try:
                    numbers.append(service.issue(sale(request_id=f"t{worker}-{i}", **extra)).number)
                except InvalidSale as exc:
                    refused.append(exc.field)

        run_threads(THREADS, sell)
        per_thread_refused = len(range(0, PER_THREAD, 3))
        assert refused == ["voids"] * (THREADS * per_thread_refused)
        issued = THREADS * (PER_THREAD - per_thread_refused)
        assert sorted(numbers) == list(range(2, 2 + issued))
        assert len(commits.log) < issued
        (row,) = query("SELECT count(*) AS n FROM receipts")
        assert row["n"] == 1 + issued


class TestGroupFailure:
    def test_a_failed_commit_fails_its_group_and_the_next_callers_go_on(
        self, service: ReceiptService, commits: Commits, query: Query
    ) -> None:
        """The first commit fails: its callers get the error, nothing of theirs is stored,
        and the lead passes on, so every later caller is still served."""
        commits.fail_first = True
        failed: list[str] = []
        numbers: list[int] = []

        def sell(worker: int) -> None:
            for i in range(5):
                try:
                    numbers.append(service.issue(sale(request_id=f"t{worker}-{i}")).number)
                except StorageError:
                    failed.append(f"t{worker}-{i}")

        run_threads(THREADS, sell)
        assert commits.log[0] == "failed"
        assert 1 <= len(failed) <= THREADS
        assert sorted(numbers) == list(range(2, 2 + THREADS * 5 - len(failed)))
        stored = {r["request_id"] for r in query("SELECT request_id FROM receipts")}
        assert stored.isdisjoint(failed)


class _Interrupted(Exception):
    """Raised by the test's signal handler in the main thread, as Ctrl-C would be."""


class TestInterruptedCaller:
    def test_a_caller_interrupted_while_queued_leaves_and_the_lead_goes_on(
        self, service: ReceiptService, monkeypatch: pytest.MonkeyPatch, query: Query
    ) -> None:
        """The main thread queues behind a slow group and a signal interrupts its wait: its
        sale is not issued, and the callers after it are still served (the lead is not
        handed to a caller that has gone)."""
        writer = service._issuing.writer
        real = writer._commit
        committing = threading.Event()

        def slow_commit() -> None:
            committing.set()
            time.sleep(1.0)
            real()

        monkeypatch.setattr(writer, "_commit", slow_commit)
        first = threading.Thread(target=service.issue, args=(sale(request_id="first"),))
        first.start()
        assert committing.wait(10)

        queued_then: list[int] = []

        def interrupt(signum: int, frame: object) -> None:
            queued_then.append(service._group.queued)  # the main thread's sale, waiting
            raise _Interrupted

        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(_Interrupted):
                service.issue(sale(request_id="interrupted"))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert queued_then == [1]
        first.join(10)
        monkeypatch.setattr(writer, "_commit", real)

        answers: list[int] = []
        later = threading.Thread(
            target=lambda: answers.append(service.issue(sale(request_id="later")).number),
            daemon=True,  # without the handover it would wait for ever
        )
        later.start()
        later.join(10)
        assert answers == [3], "the caller after the interrupted one was never served"
        issued = [r["request_id"] for r in query("SELECT request_id FROM receipts")]
        assert "interrupted" not in issued
        assert service.issue(sale(request_id="interrupted")).number == 4  # the POS retries


def _fail_the_group_commit(service: ReceiptService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next COMMIT that ends a write transaction fails as a full disk does (an early
    commit of a chain signing's intent, ``commit_so_far``, still succeeds)."""
    writer = service._issuing.writer
    real = writer._commit
    failed: list[bool] = []

    def commit() -> None:
        if writer._depth == 0 and not failed:  # the transaction's own COMMIT
            failed.append(True)
            writer._conn.execute("ROLLBACK")  # as a failed COMMIT does
            failure = "the till database cannot grow: the disk is full (injected)"
            raise StorageError(failure + NOTHING_STORED)  # as the writer says it
        real()

    monkeypatch.setattr(writer, "_commit", commit)


def _one_group(service: ReceiptService, request_ids: list[str]) -> dict[str, object]:
    """One sale for each request id, each from its own thread, all in one group (in this
    order): the receipt or the exception each caller got."""
    answers: dict[str, object] = {}

    def sell(request_id: str) -> None:
        try:
            answers[request_id] = service.issue(sale(request_id=request_id))
        except StorageError as exc:
            answers[request_id] = exc

    threads = [threading.Thread(target=sell, args=(r,)) for r in request_ids]
    with service._issuing.lock:  # the first caller leads, and waits with its group
        for queued, thread in enumerate(threads, start=1):
            thread.start()
            deadline = time.monotonic() + 10
            while service._group.queued < queued:
                assert time.monotonic() < deadline, f"sale {queued} never queued"
                time.sleep(0.001)
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller never got its answer"
    return answers


def _receipts(db: TillDB) -> list[tuple[Any, ...]]:
    sql = "SELECT number, request_id, signature_state, jws FROM receipts ORDER BY number"
    return [tuple(r) for r in db_rows(db, sql)]


class TestGroupFailureAfterAnIntent:
    """A chain unit's sale commits its signing intent, and with it the group so far, before
    the request leaves (agent/signing_step.py): a failure of the group afterwards must not
    tell the callers whose receipts that commit stored that nothing was stored."""

    def test_the_sales_stored_by_an_intent_are_answered_when_the_group_commit_fails(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        data_dir: Path,
        open_db: Callable[..., TillDB],
        registry: UnitRegistry,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Six sales in one group, the disk fills at its COMMIT: the five that the last
        sale's intent committed get their receipts, the last one is told that it keeps its
        number, and after a reopening the database holds exactly that; its retry gets it."""
        _fail_the_group_commit(chain_service, monkeypatch)
        ids = [f"s{i}" for i in range(6)]
        answers = _one_group(chain_service, ids)
        issued = {r: a for r, a in answers.items() if isinstance(a, ReceiptResult)}
        assert sorted(a.number for a in issued.values()) == [2, 3, 4, 5, 6]
        [(last, told)] = [(r, a) for r, a in answers.items() if r not in issued]
        assert last == ids[-1]  # the last of the group: its intent committed the others
        assert isinstance(told, StorageError)
        assert "the disk is full" in str(told)
        assert "nothing of it was stored" not in str(told)
        assert "keeps its receipt number" in str(told)
        assert f"request_id {last!r}" in str(told)

        db.close()
        reopened = open_db(data_dir)
        stored = _receipts(reopened)
        assert stored[1:] == sorted(
            (a.number, r, a.signature_state, a.jws) for r, a in issued.items()
        )
        assert [r[:3] for r in stored[1:]] == [(n, ids[n - 2], "signed") for n in range(2, 7)]
        [(number,)] = db_rows(reopened, "SELECT max(number) FROM pending_signings")
        assert number == 7  # the last sale's intent

        service = ReceiptService(reopened, registry, clock=clock, sign_timeout=1.5)
        again = service.issue_once(sale(request_id=last))
        assert (again.created, again.result.number) == (False, 7)
        assert again.result.signature_state == "unsigned"  # until recovery asks the service
        assert [r[:3] for r in _receipts(reopened)][-1] == (7, last, "unsigned")

    def test_a_sale_alone_whose_commit_fails_after_its_intent_is_told_it_is_kept(
        self,
        chain_service: ReceiptService,
        db: TillDB,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The group of one (no savepoint) tells the same: its number is kept."""
        _fail_the_group_commit(chain_service, monkeypatch)
        with pytest.raises(StorageError, match="keeps its receipt number") as raised:
            chain_service.issue(sale(request_id="alone"))
        assert "nothing of it was stored" not in str(raised.value)
        assert [r[:2] for r in _receipts(db)] == [(1, None)]
        again = chain_service.issue_once(sale(request_id="alone"))
        assert (again.created, again.result.number) == (False, 2)
        assert again.result.signature_state == "unsigned"

    def test_a_local_unit_s_failed_group_still_stores_and_answers_nothing(
        self, service: ReceiptService, db: TillDB, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a chain unit no sale commits early: every caller of the failed group
        is told that nothing was stored, and nothing was."""
        _fail_the_group_commit(service, monkeypatch)
        answers = _one_group(service, ["a", "b", "c"])
        assert all(isinstance(a, StorageError) for a in answers.values())
        assert all("nothing of it was stored" in str(a) for a in answers.values())
        assert [r[0] for r in _receipts(db)] == [1]

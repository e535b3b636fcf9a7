"""Spool ingestion: claim, issue, answer, release; crash recovery; watchdog as a hint."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import ConflictError, WaitsForUnit
from agent.probe import Backoff
from agent.receipts import ReceiptService
from agent.spool import STORAGE_RETRY_S, Spool, SpoolIngestor
from factories import disk_full, sale

Handler = Callable[[bytes], ReceiptResult]
Query = Callable[..., list[sqlite3.Row]]


def drop(spool: Spool, name: str, document: Any) -> Path:
    """Write a sale the way a POS must: temp file, fsync, rename to ``in/NAME``."""
    tmp = spool.inbox / f".{name}.tmp"
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    final = spool.inbox / name
    os.rename(tmp, final)
    return final


def result_of(spool: Spool, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(spool.result_path(name).read_text())
    return data


def error_of(spool: Spool, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(spool.error_path(name).read_text())
    return data


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def wait_for(path: Path, timeout: float) -> float:
    """Seconds until ``path`` exists; fails after ``timeout``."""
    start = time.monotonic()
    while not path.exists():
        assert time.monotonic() - start < timeout, f"{path.name} did not appear in {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture(name="spool")
def _spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture(name="handler")
def _handler(service: ReceiptService) -> Handler:
    return ServiceBackend(service).issue_sale


@pytest.fixture(name="ingestor")
def _ingestor(spool: Spool, handler: Handler, clock: FrozenClock) -> SpoolIngestor:
    return SpoolIngestor(spool, handler, clock=clock, backoff=Backoff(1.0, 60.0, jitter=0.0))


@pytest.fixture(name="running")
def _running(spool: Spool, handler: Handler) -> Iterator[Callable[..., SpoolIngestor]]:
    """Start an ingestor with a real watchdog observer; stopped (and joined) at teardown."""
    started: list[SpoolIngestor] = []

    def run(**kwargs: Any) -> SpoolIngestor:
        ingestor = SpoolIngestor(spool, handler, **kwargs)
        ingestor.start()
        started.append(ingestor)
        return ingestor

    yield run
    for ingestor in started:
        ingestor.stop()


class FailingOnce:
    """A handler that raises an unexpected error the first time it sees a given sale."""

    def __init__(self, inner: Handler, request_id: str) -> None:
        self.inner = inner
        self.request_id = request_id
        self.failures = 0

    def __call__(self, raw: bytes) -> ReceiptResult:
        if json.loads(raw)["request_id"] == self.request_id and not self.failures:
            self.failures += 1
            raise OSError("disk I/O error (simulated)")
        return self.inner(raw)


class TestIngestion:
    def test_files_present_at_start_are_processed(
        self, spool: Spool, ingestor: SpoolIngestor, query: Query
    ) -> None:
        """Sales dropped before the agent looks are all answered by the first scan."""
        for n in range(3):
            drop(spool, f"s{n}.json", sale(request_id=f"r-{n}"))
        assert ingestor.run_once() == 3
        numbers = [result_of(spool, f"s{n}.json")["number"] for n in range(3)]
        assert numbers == [2, 3, 4]  # the Startbeleg is number 1
        assert files(spool.inbox) == files(spool.work) == []
        assert len(query("SELECT * FROM receipts")) == 4

    def test_the_result_file_is_the_receipt_result(
        self, spool: Spool, ingestor: SpoolIngestor, service: ReceiptService
    ) -> None:
        """The answer is the ReceiptResult by alias, exactly as the service stored it."""
        drop(spool, "a.json", sale())
        ingestor.run_once()
        stored = service.get("KASSE-1", 2).model_dump(by_alias=True)
        assert result_of(spool, "a.json") == stored

    def test_temp_and_foreign_files_are_ignored_until_renamed(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        """Dotfiles, *.tmp and other suffixes are never claimed (the POS is still writing)."""
        payload = json.dumps(sale()).encode()
        for name in (".hidden.json", "half.json.tmp", "half.tmp", "notes.txt", ".json"):
            (spool.inbox / name).write_bytes(payload)
        (spool.inbox / ".link.json").symlink_to(spool.inbox / "notes.txt")
        before = files(spool.inbox)
        assert ingestor.run_once() == 0
        assert files(spool.inbox) == before
        os.rename(spool.inbox / "half.tmp", spool.inbox / "half.json")
        assert ingestor.run_once() == 1
        assert result_of(spool, "half.json")["number"] == 2

    def test_files_are_processed_oldest_first(self, spool: Spool, ingestor: SpoolIngestor) -> None:
        """The order is the files' modification time, not their names."""
        for n, name in enumerate(("c.json", "a.json", "b.json")):
            path = drop(spool, name, sale(request_id=f"r-{name}"))
            os.utime(path, ns=(10**18 + n, 10**18 + n))
        ingestor.run_once()
        assert [result_of(spool, n)["number"] for n in ("c.json", "a.json", "b.json")] == [2, 3, 4]

    def test_the_progress_hook_is_called(self, spool: Spool, handler: Handler) -> None:
        """Every scan and every answered file feeds the hook, even an idle scan."""
        calls: list[int] = []
        ingestor = SpoolIngestor(spool, handler, on_progress=lambda: calls.append(1))
        ingestor.run_once()
        assert len(calls) == 1
        drop(spool, "a.json", sale())
        ingestor.run_once()
        assert len(calls) == 3


class TestBadSales:
    def test_a_bad_sale_is_answered_with_field_and_rule_and_consumes_no_number(
        self, spool: Spool, ingestor: SpoolIngestor, query: Query
    ) -> None:
        """The error file names the field and rule; the sale is kept beside it."""
        bad = sale(request_id="bad")
        bad["lines"][0]["vat"] = "luxury"
        drop(spool, "bad.json", bad)
        drop(spool, "good.json", sale(request_id="good"))
        assert ingestor.run_once() == 2
        error = error_of(spool, "bad.json")
        assert (error["field"], error["rule"]) == ("lines.0.vat", "allowed-values")
        assert error["message"]
        assert json.loads((spool.failed / "bad.json").read_bytes()) == bad
        assert result_of(spool, "good.json")["number"] == 2
        assert [r["number"] for r in query("SELECT number FROM receipts")] == [1, 2]
        assert not spool.result_path("bad.json").exists()

    @pytest.mark.parametrize(
        ("content", "field", "rule"),
        [
            (b"{not json", "(document)", "json"),
            (b"", "(document)", "json"),
            (b"\xff\xfe", "(document)", "json"),
            (b"[]", "(document)", "type-object"),
            (
                json.dumps(sale(kind="storno", voids=2**70, lines=[])).encode(),
                "voids",
                "maximum",
            ),
        ],
    )
    def test_undecodable_files_are_answered(
        self, spool: Spool, ingestor: SpoolIngestor, content: bytes, field: str, rule: str
    ) -> None:
        """Whatever the bytes, the POS gets an error naming the document or the field."""
        drop(spool, "x.json", content)
        assert ingestor.run_once() == 1
        assert (error_of(spool, "x.json")["field"], error_of(spool, "x.json")["rule"]) == (
            field,
            rule,
        )

    def test_a_file_over_the_size_limit_is_refused_unread(
        self, tmp_path: Path, handler: Handler
    ) -> None:
        """A huge file is answered with max-size instead of being parsed."""
        spool = Spool(tmp_path / "small", max_bytes=100)
        drop(spool, "big.json", sale())
        SpoolIngestor(spool, handler).run_once()
        assert error_of(spool, "big.json")["rule"] == "max-size"

    def test_a_fiscal_error_is_answered_not_retried(self, spool: Spool, handler: Handler) -> None:
        """A FiscalError (e.g. a conflict) is an answer for the POS, not a retry."""

        def conflicting(raw: bytes) -> ReceiptResult:
            raise ConflictError("this request conflicts with the journal")

        drop(spool, "c.json", sale())
        assert SpoolIngestor(spool, conflicting).run_once() == 1
        assert error_of(spool, "c.json")["rule"] == "conflict"


class TestNotAFile:
    """Whatever is named like a sale but is no regular file gets an answer, unread."""

    def refused(self, spool: Spool, name: str, kind: str) -> None:
        error = error_of(spool, name)
        assert (error["field"], error["rule"]) == ("(document)", "regular-file")
        assert f"this is {kind}, which is never followed or read" in error["message"]
        assert files(spool.inbox) == files(spool.work) == []

    def test_a_symlink_is_answered_and_never_followed(
        self,
        spool: Spool,
        ingestor: SpoolIngestor,
        query: Query,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A link to a valid sale elsewhere issues nothing: the link itself goes to failed/."""
        elsewhere = tmp_path / "secret.json"
        elsewhere.write_text(json.dumps(sale()))
        (spool.inbox / "link.json").symlink_to(elsewhere)
        with caplog.at_level(logging.WARNING, logger="agent.spool"):
            assert ingestor.run_once() == 1
        self.refused(spool, "link.json", "a symbolic link")
        assert os.readlink(spool.failed / "link.json") == str(elsewhere)
        assert json.loads(elsewhere.read_text()) == sale()
        assert len(query("SELECT * FROM receipts")) == 1  # the Startbeleg only
        assert "link.json refused unread" in caplog.text

    def test_a_dangling_symlink_is_answered(self, spool: Spool, ingestor: SpoolIngestor) -> None:
        (spool.inbox / "gone.json").symlink_to(spool.root / "nowhere.json")
        assert ingestor.run_once() == 1
        self.refused(spool, "gone.json", "a symbolic link")

    def test_a_directory_is_answered_and_moved_to_failed(
        self, spool: Spool, ingestor: SpoolIngestor, caplog: pytest.LogCaptureFixture
    ) -> None:
        (spool.inbox / "dir.json").mkdir()
        (spool.inbox / "dir.json" / "sale.json").write_text(json.dumps(sale()))
        with caplog.at_level(logging.WARNING, logger="agent.spool"):
            assert ingestor.run_once() == 1
        self.refused(spool, "dir.json", "a directory")
        assert files(spool.failed / "dir.json") == ["sale.json"]
        assert "dir.json refused unread" in caplog.text

    def test_a_named_pipe_is_answered_without_waiting_for_a_writer(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        os.mkfifo(spool.inbox / "pipe.json")
        assert ingestor.run_once() == 1
        self.refused(spool, "pipe.json", "a named pipe")

    def test_a_link_claimed_before_a_crash_is_answered_at_restart(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        (spool.work / "link.json").symlink_to(spool.root / "nowhere.json")
        assert ingestor.run_once() == 1
        self.refused(spool, "link.json", "a symbolic link")

    def test_a_sale_under_the_name_of_a_refused_directory_is_issued(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        """The refused directory in failed/ makes way, as an earlier failed sale would."""
        (spool.inbox / "dir.json").mkdir()
        ingestor.run_once()
        drop(spool, "dir.json", sale())
        assert ingestor.run_once() == 1
        assert result_of(spool, "dir.json")["number"] == 2
        assert files(spool.failed) == []

    def test_a_directory_wakes_the_worker(
        self, spool: Spool, running: Callable[..., SpoolIngestor]
    ) -> None:
        """With a one-minute rescan, only the directory's watchdog event explains an answer."""
        running(rescan_s=60.0)
        time.sleep(0.2)  # let the first (empty) scan pass
        (spool.inbox / "dir.json").mkdir()
        assert wait_for(spool.error_path("dir.json"), timeout=5.0) < 1.0


class TestIdempotence:
    def test_the_same_request_id_twice_gives_the_same_receipt(
        self, spool: Spool, ingestor: SpoolIngestor, query: Query
    ) -> None:
        """Two files carrying the same sale get one receipt, answered twice."""
        drop(spool, "first.json", sale(request_id="same"))
        drop(spool, "again.json", sale(request_id="same"))
        assert ingestor.run_once() == 2
        assert result_of(spool, "first.json") == result_of(spool, "again.json")
        assert len(query("SELECT * FROM receipts WHERE request_id = 'same'")) == 1

    def test_the_same_request_id_with_another_sale_is_an_error(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        """Reusing a request_id for a different sale is refused, naming the request_id."""
        drop(spool, "first.json", sale(request_id="same"))
        ingestor.run_once()
        drop(spool, "other.json", sale(request_id="same", cashier="Eva"))
        ingestor.run_once()
        assert error_of(spool, "other.json")["rule"] == "request-id-reused"

    def test_a_name_used_again_replaces_the_earlier_answer(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        """A new sale under an answered name gets its own answer, never the old one."""
        bad = sale(request_id="one", lines=[])
        drop(spool, "n.json", bad)
        ingestor.run_once()
        assert spool.error_path("n.json").exists()
        drop(spool, "n.json", sale(request_id="two"))
        ingestor.run_once()
        assert result_of(spool, "n.json")["number"] == 2
        assert not spool.error_path("n.json").exists()
        assert not (spool.failed / "n.json").exists()


class TestFailures:
    def test_an_unexpected_error_does_not_stop_ingestion(
        self, spool: Spool, handler: Handler, clock: FrozenClock
    ) -> None:
        """The failing file stays claimed and is retried after the backoff; others go on."""
        failing = FailingOnce(handler, "r-a")
        ingestor = SpoolIngestor(
            spool, failing, clock=clock, backoff=Backoff(2.0, 60.0, jitter=0.0)
        )
        drop(spool, "a.json", sale(request_id="r-a"))
        drop(spool, "b.json", sale(request_id="r-b"))
        assert ingestor.run_once() == 1
        assert result_of(spool, "b.json")["number"] == 2
        assert files(spool.work) == ["a.json"]
        assert ingestor.retrying == ["a.json"]
        assert ingestor.run_once() == 0  # not due yet
        clock.advance(2.0)
        assert ingestor.run_once() == 1
        assert result_of(spool, "a.json")["number"] == 3
        assert files(spool.work) == []
        assert ingestor.retrying == []

    def test_a_full_disk_keeps_the_sale_until_there_is_room(
        self,
        spool: Spool,
        handler: Handler,
        clock: FrozenClock,
        service: ReceiptService,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A sale the till cannot store is not the sale's fault: no error answer, the file
        stays claimed (logged as an error that says why, without a traceback) and is
        issued once the disk has room again."""
        ingestor = SpoolIngestor(
            spool, handler, clock=clock, backoff=Backoff(1.0, 60.0, jitter=0.0)
        )
        disk_full(service)
        for i in range(500):  # the first sales still fit in the free space of the pages
            name = f"s{i:03d}.json"
            drop(spool, name, sale(request_id=f"r{i}"))
            if ingestor.run_once() == 0:
                break
        assert files(spool.work) == [name]
        assert files(spool.failed) == []
        assert ingestor.retrying == [name]
        [logged] = [r for r in caplog.records if r.name == "agent.spool" and name in r.message]
        assert (logged.levelname, logged.exc_info) == ("ERROR", None)
        assert "disk is full" in logged.message
        disk_full(service, full=False)
        clock.advance(1.0)
        assert ingestor.run_once() == 1
        assert result_of(spool, name)["number"] == i + 2  # the Startbeleg is 1
        assert files(spool.work) == []

    def fill_until_one_waits(
        self, spool: Spool, ingestor: SpoolIngestor, service: ReceiptService
    ) -> str:
        """Fill the database; the first sale that finds no room stays claimed."""
        disk_full(service)
        for i in range(500):  # the first sales still fit in the free space of the pages
            name = f"s{i:03d}.json"
            drop(spool, name, sale(request_id=f"r{i}"))
            if ingestor.run_once() == 0:
                return name
        raise AssertionError("the database never filled")

    def test_after_a_full_disk_the_waiting_sale_goes_before_later_ones(
        self,
        spool: Spool,
        handler: Handler,
        clock: FrozenClock,
        service: ReceiptService,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The full disk lasted long (the backoff would have grown to 60 s): once there is
        room, the sale that waited is retried at the next file and gets the earlier
        number, and its answer is logged at INFO."""
        caplog.set_level(logging.DEBUG, "agent.spool")
        ingestor = SpoolIngestor(spool, handler, clock=clock, backoff=Backoff(1.0, 60.0, 0.0))
        waiting = self.fill_until_one_waits(spool, ingestor, service)
        for _ in range(10):
            clock.advance(60.0)
            assert ingestor.run_once() == 0
        logged = [r for r in caplog.records if r.name == "agent.spool" and waiting in r.message]
        assert [r.levelname for r in logged] == ["ERROR"] + ["DEBUG"] * 10
        disk_full(service, full=False)
        drop(spool, "later.json", sale(request_id="r-later"))
        assert ingestor.run_once() == 2
        assert result_of(spool, waiting)["number"] < result_of(spool, "later.json")["number"]
        [answered] = [r for r in caplog.records if "answered after" in r.message]
        assert answered.levelname == "INFO"
        assert waiting in answered.message

    def test_after_a_full_disk_the_waiting_sale_is_retried_within_seconds(
        self, spool: Spool, handler: Handler, clock: FrozenClock, service: ReceiptService
    ) -> None:
        """No new file comes: the storage retry still comes after STORAGE_RETRY_S, not
        after the grown backoff."""
        ingestor = SpoolIngestor(spool, handler, clock=clock, backoff=Backoff(1.0, 60.0, 0.0))
        waiting = self.fill_until_one_waits(spool, ingestor, service)
        for _ in range(6):
            clock.advance(STORAGE_RETRY_S)
            assert ingestor.run_once() == 0
        disk_full(service, full=False)
        assert ingestor.run_once() == 0  # not due yet
        clock.advance(STORAGE_RETRY_S)
        assert ingestor.run_once() == 1
        assert files(spool.work) == []
        assert result_of(spool, waiting)["number"] > 1

    def test_a_sale_for_a_register_waiting_for_the_unit_waits_too(
        self, spool: Spool, clock: FrozenClock
    ) -> None:
        """WaitsForUnit is not an answer: the sale stays claimed until it can be issued."""

        def waiting(raw: bytes) -> ReceiptResult:
            raise WaitsForUnit("register KASSE-2 waits for its Startbeleg")

        ingestor = SpoolIngestor(spool, waiting, clock=clock)
        drop(spool, "w.json", sale(register="KASSE-2"))
        assert ingestor.run_once() == 0
        assert files(spool.work) == ["w.json"]
        assert files(spool.out) == files(spool.failed) == []
        assert ingestor.retrying == ["w.json"]

    def test_a_new_file_under_a_name_being_retried_waits_for_it(
        self, spool: Spool, handler: Handler, clock: FrozenClock
    ) -> None:
        """A claim never overwrites a claimed file: the newer one waits in in/."""
        ingestor = SpoolIngestor(spool, FailingOnce(handler, "r-1"), clock=clock)
        drop(spool, "n.json", sale(request_id="r-1"))
        ingestor.run_once()
        drop(spool, "n.json", sale(request_id="r-2"))
        ingestor.run_once()
        assert files(spool.inbox) == ["n.json"]
        assert json.loads((spool.work / "n.json").read_bytes())["request_id"] == "r-1"

    def test_a_failing_progress_hook_does_not_stop_ingestion(
        self, spool: Spool, handler: Handler
    ) -> None:
        """The hook belongs to the service; its failure is logged and ignored."""

        def broken() -> None:
            raise RuntimeError("watchdog socket gone")

        drop(spool, "a.json", sale())
        assert SpoolIngestor(spool, handler, on_progress=broken).run_once() == 1


class TestCrashRecovery:
    """A crash leaves the file in work/; the next start finishes it exactly once."""

    def claimed(self, spool: Spool, name: str, document: Any) -> None:
        drop(spool, name, document)
        os.rename(spool.inbox / name, spool.work / name)

    def test_a_claimed_file_is_issued_at_restart(
        self, spool: Spool, ingestor: SpoolIngestor, query: Query
    ) -> None:
        """Killed after the claim, before the receipt: the restart issues it."""
        self.claimed(spool, "a.json", sale())
        assert ingestor.run_once() == 1
        assert result_of(spool, "a.json")["number"] == 2
        assert files(spool.work) == []
        assert len(query("SELECT * FROM receipts")) == 2

    def test_a_receipt_issued_before_the_crash_is_not_issued_twice(
        self, spool: Spool, ingestor: SpoolIngestor, service: ReceiptService, query: Query
    ) -> None:
        """Killed after the commit, before the answer: the restart answers the same receipt."""
        issued = service.issue(sale())
        self.claimed(spool, "a.json", sale())
        assert ingestor.run_once() == 1
        assert result_of(spool, "a.json") == issued.model_dump(by_alias=True)
        assert len(query("SELECT * FROM receipts")) == 2

    def test_an_answered_file_is_only_released(self, spool: Spool, query: Query) -> None:
        """Killed after the answer, before the release: the handler is not even called."""
        calls: list[bytes] = []

        def handler(raw: bytes) -> ReceiptResult:
            calls.append(raw)
            raise AssertionError("must not be called")

        self.claimed(spool, "a.json", sale())
        spool.result_path("a.json").write_text('{"number": 2}')
        assert SpoolIngestor(spool, handler).run_once() == 1
        assert calls == []
        assert files(spool.work) == []
        assert result_of(spool, "a.json") == {"number": 2}

    def test_an_error_answered_file_is_moved_to_failed(self, spool: Spool) -> None:
        """Killed between the error answer and the move: the sale still reaches failed/."""
        self.claimed(spool, "a.json", b"{broken")
        spool.error_path("a.json").write_text('{"rule": "json"}')
        assert SpoolIngestor(spool, lambda raw: pytest.fail("called")).run_once() == 1
        assert (spool.failed / "a.json").read_bytes() == b"{broken"
        assert files(spool.work) == []

    def test_our_stale_temp_files_are_removed_at_start(self, spool: Spool) -> None:
        """A half-written answer of a crashed agent never looks like an answer."""
        (spool.out / ".a.result.json.123.tmp").write_text("{")
        (spool.inbox / ".pos.json.tmp").write_text("{")
        again = Spool(spool.root)
        assert files(again.out) == []
        assert files(again.inbox) == [".pos.json.tmp"]  # the POS's own files are left alone


class TestWorker:
    def test_files_present_at_start_are_processed_without_an_event(
        self, spool: Spool, running: Callable[..., SpoolIngestor]
    ) -> None:
        """No event comes for a file that was there before the watch: the first scan finds it."""
        drop(spool, "early.json", sale())
        running(rescan_s=60.0)
        wait_for(spool.result_path("early.json"), timeout=5.0)

    def test_a_watchdog_event_picks_up_a_new_file_within_a_second(
        self, spool: Spool, running: Callable[..., SpoolIngestor]
    ) -> None:
        """With a one-minute rescan, only the watchdog event can explain a quick answer."""
        ingestor = running(rescan_s=60.0)
        time.sleep(0.2)  # let the first (empty) scan pass
        assert ingestor.alive
        drop(spool, "late.json", sale())
        assert wait_for(spool.result_path("late.json"), timeout=5.0) < 1.0

    def test_the_periodic_rescan_finds_what_no_event_announced(
        self, tmp_path: Path, handler: Handler
    ) -> None:
        """Even without a working watch, a file is found by the next rescan."""
        spool = Spool(tmp_path / "s")
        ingestor = SpoolIngestor(spool, handler, rescan_s=0.2)
        worker = threading.Thread(target=ingestor._loop, daemon=True)  # no observer at all
        worker.start()
        try:
            time.sleep(0.1)
            drop(spool, "quiet.json", sale())
            wait_for(spool.result_path("quiet.json"), timeout=5.0)
        finally:
            ingestor.stop()
            worker.join(5.0)

    def test_stop_joins_every_thread(self, spool: Spool, handler: Handler) -> None:
        """After stop() neither the worker nor the observer thread is left running."""
        before = set(threading.enumerate())
        ingestor = SpoolIngestor(spool, handler, rescan_s=0.1)
        ingestor.start()
        assert ingestor.alive
        ingestor.stop()
        assert not ingestor.alive
        assert set(threading.enumerate()) - before == set()

    def test_a_failing_handler_never_kills_the_worker(
        self, spool: Spool, handler: Handler, running: Callable[..., SpoolIngestor]
    ) -> None:
        """An unexpected error is retried by the worker while later files are answered."""
        ingestor = running(rescan_s=0.1, backoff=Backoff(0.2, 0.5, jitter=0.0))
        ingestor.handler = FailingOnce(handler, "r-a")
        drop(spool, "a.json", sale(request_id="r-a"))
        drop(spool, "b.json", sale(request_id="r-b"))
        wait_for(spool.result_path("b.json"), timeout=5.0)
        wait_for(spool.result_path("a.json"), timeout=5.0)
        assert ingestor.alive


class TestNames:
    """A name the filesystem cannot give an answer never stops the other files."""

    LONG = "n" * 245 + ".json"  # 250 bytes: its answer NAME.result.json would be 257

    def test_a_name_too_long_for_its_answer_is_answered_shortened_and_the_rest_go_on(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        drop(spool, "a.json", sale(request_id="r-a"))
        drop(spool, self.LONG, sale(request_id="r-long"))
        drop(spool, "sp ace ü.json", sale(request_id="r-u"))
        assert ingestor.run_once() == 3
        assert result_of(spool, "a.json")["number"] == 2
        assert result_of(spool, "sp ace ü.json")["number"] == 3  # the long name took none
        short = spool.error_path(self.LONG).name
        assert short.startswith("n" * 64 + "~")
        assert len(short) < 100
        assert error_of(spool, self.LONG)["rule"] == "name-too-long"
        assert "bytes" in error_of(spool, self.LONG)["message"]
        assert short in error_of(spool, self.LONG)["message"]
        assert files(spool.failed) == sorted([short, short.replace(".error.json", ".json")])
        assert files(spool.inbox) == files(spool.work) == []

    def test_the_limit_is_in_bytes_not_characters(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        """225 bytes of NAME fit (the answer's temp name is then 255 bytes); one more, in
        a two-byte character, does not, although it is far fewer characters."""
        fits = "é" * 112 + "x.json"  # 225 bytes, 113 characters
        too_long = "é" * 113 + ".json"  # 226 bytes, 113 characters
        drop(spool, fits, sale(request_id="r-fits"))
        drop(spool, too_long, sale(request_id="r-long"))
        assert ingestor.run_once() == 2
        assert result_of(spool, fits)["number"] == 2
        assert error_of(spool, too_long)["rule"] == "name-too-long"
        assert spool.error_path(too_long).name.startswith("é" * 32 + "~")
        assert (spool.failed / fits).exists() is False

    def test_a_long_name_claimed_before_a_crash_is_answered_at_restart(
        self, spool: Spool, ingestor: SpoolIngestor
    ) -> None:
        drop(spool, self.LONG, sale())
        os.rename(spool.inbox / self.LONG, spool.work / self.LONG)
        assert ingestor.run_once() == 1
        assert error_of(spool, self.LONG)["rule"] == "name-too-long"
        assert files(spool.work) == []

    def test_a_file_that_cannot_be_claimed_is_skipped_and_logged_once(
        self, spool: Spool, ingestor: SpoolIngestor, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Its stale answer cannot be removed (a directory stands there): the other files
        are answered, the scan does not fail, the ERROR names the file once."""
        spool.error_path("stuck.json").mkdir()
        drop(spool, "stuck.json", sale(request_id="r-stuck"))
        drop(spool, "b.json", sale(request_id="r-b"))
        assert ingestor.run_once() == 1
        drop(spool, "c.json", sale(request_id="r-c"))
        assert ingestor.run_once() == 1
        assert result_of(spool, "c.json")["number"] == 3
        assert files(spool.inbox) == ["stuck.json"]
        logged = [r for r in caplog.records if "stuck.json" in r.getMessage()]
        assert [r.levelname for r in logged] == ["ERROR"]
        spool.error_path("stuck.json").rmdir()
        assert ingestor.run_once() == 1
        assert result_of(spool, "stuck.json")["number"] == 4

    def test_the_worker_answers_every_file_around_a_long_name(
        self, spool: Spool, running: Callable[..., SpoolIngestor]
    ) -> None:
        drop(spool, self.LONG, sale(request_id="r-long"))
        for i in range(3):
            drop(spool, f"w{i}.json", sale(request_id=f"r-w{i}"))
        ingestor = running(rescan_s=0.2)
        wait_for(spool.result_path("w2.json"), 10.0)
        wait_for(spool.error_path(self.LONG), 10.0)
        ingestor.stop()
        assert files(spool.inbox) == files(spool.work) == []

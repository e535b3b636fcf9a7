"""A really full disk while the probe and the print loop go on: each says so in one
readable ERROR line per run of failures, without a traceback (the failure is expected
and its message says what failed), and again only once the run has ended.

The till database lives on a small tmpfs, its WAL truncated by a checkpoint and the file
system filled, so the next write cannot get a block (SQLITE_FULL, a StorageError)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from smallfs import fill_up_after_checkpoint, small_tmpfs

from agent.clock import FrozenClock
from agent.print_worker import PrintWorker
from agent.printing import NullPrinter
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import sale


@pytest.fixture(name="small_fs")
def _small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (:func:`smallfs.small_tmpfs`)."""
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


@pytest.fixture(name="data_dir")
def _data_dir(small_fs: Path) -> Path:
    """The till's data directory on the small file system (every fixture's database)."""
    return small_fs / "data"


def _errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR]


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class TestTheProbe:
    def probe_for(self, prober: Prober, clock: FrozenClock, seconds: float) -> None:
        """Run the probe every half second of the frozen clock for ``seconds``."""
        for _ in range(int(seconds * 2)):
            prober.run_once()
            clock.advance(0.5)

    def test_a_full_disk_is_one_line_per_run_of_failures(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        small_fs: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The unit is down, so every probe records its failure, which the full disk
        refuses: one ERROR without a traceback for 30 s of probes (the visits in between
        that were not due end nothing), and one more only after a probe that ran and
        stored its result."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))  # opens the outage: the probe's target
        prober = Prober(service, Backoff(1.0, 4.0, jitter=0.0), deadline=1.0)
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        self.probe_for(prober, clock, 30.0)
        [error] = _errors(caplog, "agent.probe")
        assert error.exc_info is None
        assert "its probe or recovery failed" in error.getMessage()
        assert "disk is full" in error.getMessage()
        filler.unlink()
        self.probe_for(prober, clock, 10.0)  # probes run and store their result
        assert len(_errors(caplog, "agent.probe")) == 1
        fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        self.probe_for(prober, clock, 10.0)
        assert len(_errors(caplog, "agent.probe")) == 2


class TestThePrintLoop:
    def test_a_full_disk_is_one_line_per_run_of_failures(
        self, service: ReceiptService, small_fs: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """New receipts whose print jobs cannot be stored: the loop retries quickly, and
        says so once, in one line naming the full disk, and once that it recovered."""
        caplog.set_level(logging.DEBUG, logger="agent.loop")
        worker = PrintWorker(service, NullPrinter())
        for i in range(5):
            service.issue(sale(request_id=f"p-{i}"))
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        worker._loop.error_wait = worker._loop.max_wait = 0.01
        worker.start()
        try:
            assert _wait_until(lambda: sum(r.name == "agent.loop" for r in caplog.records) >= 10), (
                "the loop did not retry"
            )
            [error] = _errors(caplog, "agent.loop")
            assert error.exc_info is None
            message = error.getMessage()
            assert message.startswith("printer loop failed: ")
            assert "disk is full" in message
            assert "Traceback" not in caplog.text
            filler.unlink()
            assert _wait_until(
                lambda: any(r.getMessage() == "printer loop recovered" for r in caplog.records)
            )
        finally:
            worker.stop()
        assert len(_errors(caplog, "agent.loop")) == 1

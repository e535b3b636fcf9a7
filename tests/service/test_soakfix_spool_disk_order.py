"""Spool sales that meet a really full disk keep their place in the numbering.

The till database and the spool live on a small tmpfs that is filled (its WAL truncated
first, so the next write needs a block: SQLITE_FULL, a StorageError). Once there is room
again, the sales are numbered in the order the POS wrote them (the spool's order: oldest
first), whether the room comes back while a scan goes on or between two scans, and
whatever jitter the retries have."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from smallfs import fill_up_after_checkpoint, small_tmpfs

from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import StorageError
from agent.probe import Backoff
from agent.receipts import ReceiptService
from agent.spool import Spool, SpoolIngestor
from factories import sale

Handler = Callable[[bytes], ReceiptResult]
_T0 = 1_700_000_000  # the sales' modification times: one second apart, oldest first


@pytest.fixture(name="small_fs")
def _small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (:func:`smallfs.small_tmpfs`)."""
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


@pytest.fixture(name="data_dir")
def _data_dir(small_fs: Path) -> Path:
    """The till's data directory on the small file system (every fixture's database)."""
    return small_fs / "data"


@pytest.fixture(name="spool")
def _spool(small_fs: Path) -> Spool:
    return Spool(small_fs / "spool")


def _write(directory: Path, index: int) -> None:
    """Sale ``s<index>`` in ``directory``, written the POS's way, ``index`` s after _T0."""
    name = f"s{index:02d}.json"
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(sale(request_id=f"s-{index:02d}")))
    os.utime(tmp, (_T0 + index, _T0 + index))
    os.rename(tmp, directory / name)


def _numbers(spool: Spool, count: int) -> list[int]:
    """The receipt numbers of s00.. in the order the sales were written."""
    return [
        json.loads(spool.result_path(f"s{i:02d}.json").read_text())["number"] for i in range(count)
    ]


def _drain(ingestor: SpoolIngestor, clock: FrozenClock, spool: Spool) -> None:
    """Scan every 0.1 s (of the frozen clock) until in/ and work/ are empty."""
    for _ in range(200):
        if not any(spool.inbox.iterdir()) and not any(spool.work.iterdir()):
            return
        clock.advance(0.1)
        ingestor.run_once()
    raise AssertionError("the spool was never emptied")


class TestAFullDiskKeepsTheOrder:
    def test_room_back_while_the_scan_goes_on(
        self,
        spool: Spool,
        service: ReceiptService,
        clock: FrozenClock,
        small_fs: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The first sale finds the disk full; the room comes back before the next one
        (the repro: a file removed meanwhile). The scan claims nothing more: the next
        files stay in in/, and every sale is numbered in the order it was written."""
        for i in range(10):
            _write(spool.inbox, i)
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        inner = ServiceBackend(service).issue_sale

        def room_after_the_first_failure(raw: bytes) -> ReceiptResult:
            try:
                return inner(raw)
            except StorageError:
                filler.unlink(missing_ok=True)
                raise

        ingestor = SpoolIngestor(
            spool, room_after_the_first_failure, clock=clock, backoff=Backoff(1.0, 60.0, 0.0)
        )
        assert ingestor.run_once() == 0
        assert sorted(p.name for p in spool.work.iterdir()) == ["s00.json"]
        assert len(list(spool.inbox.glob("*.json"))) == 9
        errors = [r for r in caplog.records if r.name == "agent.spool" and r.levelno >= 40]
        assert ["s00.json" in r.getMessage() for r in errors] == [True]
        _drain(ingestor, clock, spool)
        numbers = _numbers(spool, 10)
        assert numbers == sorted(numbers)
        assert numbers == list(range(numbers[0], numbers[0] + 10))

    def test_sales_waiting_in_work_are_retried_together_in_their_order(
        self,
        spool: Spool,
        service: ReceiptService,
        clock: FrozenClock,
        small_fs: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Sales claimed before a restart meet the full disk: the first one's failure
        stops the scan, and the retries (jittered) come at one time for all of them, in
        the spool's order, so none is numbered before an older one."""
        caplog.set_level(logging.DEBUG, "agent.spool")
        for i in range(8):
            _write(spool.work, i)
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        ingestor = SpoolIngestor(
            spool,
            ServiceBackend(service).issue_sale,
            clock=clock,
            backoff=Backoff(1.0, 60.0, jitter=0.5, rng=random.Random(3)),
        )
        for _ in range(3):
            assert ingestor.run_once() == 0
            clock.advance(0.7)
        tried = {r.args[0] for r in caplog.records if "not answered yet" in r.getMessage()}
        assert tried == {"s00.json"}  # the others wait behind it, untried
        filler.unlink()
        _drain(ingestor, clock, spool)
        numbers = _numbers(spool, 8)
        assert numbers == list(range(numbers[0], numbers[0] + 8))

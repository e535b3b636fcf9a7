"""A tick of the outage watch whose transaction cannot commit (the disk is full) loses
none of the outage's age: what the watch keeps in memory (when it last aged the outage,
the last look at the clocks) changes only once the tick's writes are committed.

The disk is really full: the till database lives on a small tmpfs, its WAL is truncated
by a checkpoint and the file system is filled, so the tick's first frame cannot be
written (SQLITE_FULL, a StorageError that rolls the tick back)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from smallfs import fill_up_after_checkpoint, small_tmpfs

from agent.clock import FrozenClock
from agent.errors import StorageError
from agent.outage_watch import OutageWatch
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import journal_events, sale, the_outage

HOUR = 3600.0


@pytest.fixture(name="small_fs")
def _small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (:func:`smallfs.small_tmpfs`)."""
    with small_tmpfs(tmp_path, "4m") as mount:
        yield mount


@pytest.fixture(name="data_dir")
def _data_dir(small_fs: Path) -> Path:
    """The till's data directory on the small file system (every fixture's database)."""
    return small_fs / "data"


class TestAFailedTickLosesNoAge:
    def test_the_hour_of_the_failed_tick_is_counted_by_the_next(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        small_fs: Path,
    ) -> None:
        """Aged 1 h, the tick at 2 h fails on the full disk (nothing stored), the tick at
        3 h, with room again, stores 3 h: not 2 h, as if the failed tick had counted."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        watch.tick()
        clock.advance(HOUR)
        watch.tick()
        assert the_outage(service).age_seconds == pytest.approx(HOUR)
        clock.advance(HOUR)
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        with pytest.raises(StorageError, match="disk is full"):
            watch.tick()
        filler.unlink()
        assert the_outage(service).age_seconds == pytest.approx(HOUR)  # rolled back
        clock.advance(HOUR)
        watch.tick()
        assert the_outage(service).age_seconds == pytest.approx(3 * HOUR)

    def test_a_jump_seen_by_a_failed_tick_is_journaled_by_the_next(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        clock: FrozenClock,
        watch: OutageWatch,
        small_fs: Path,
    ) -> None:
        """The wall clock jumps a day; the tick that sees it fails: the next tick still
        journals the jump (it compares with the last tick that committed), and the age
        follows the boot clock."""
        flaky.mode = "down"
        service.issue(sale(request_id="r-1"))
        watch.tick()
        clock.advance(HOUR)
        clock.jump(24 * HOUR)
        filler = fill_up_after_checkpoint(service.db.write_connection()._conn, small_fs)
        with pytest.raises(StorageError, match="disk is full"):
            watch.tick()
        filler.unlink()
        clock.advance(HOUR)
        watch.tick()
        [jump] = journal_events(service.db, "clock.jump")
        assert float(str(jump["delta_seconds"])) == pytest.approx(24 * HOUR)
        assert the_outage(service).age_seconds == pytest.approx(2 * HOUR)

"""Receipts dated in a quarter whose DEP backup is written already (agent/backup.py): the
clock was stepped back after the backup (NTP, minutes fast at midnight). They are found,
said once, and a supplementary backup of the whole quarter is written beside the first."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path

import pytest

from agent import backup as backup_module
from agent.at_rksv.dep import stream_dep
from agent.backup import DepBackups, backup_statuses, list_backups
from agent.clock import FrozenClock
from agent.errors import BackupFailed
from agent.receipts import ReceiptService
from factories import db_rows, journal_events, sale

REGISTER = "KASSE-1"
Q1_ENDS = dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC)  # 1 April 00:00 in Vienna (CEST)
FAST = Q1_ENDS + backup_module.QUARTER_GRACE + dt.timedelta(seconds=30)


@pytest.fixture(name="backup_dir")
def _backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture(name="backups")
def _backups(service: ReceiptService, backup_dir: Path, clock: FrozenClock) -> DepBackups:
    """The backup job of the till holding KASSE-1 (created 2026-03-02, mid-Q1)."""
    return DepBackups(service.db, backup_dir, clock)


def _numbers(service: ReceiptService, path: Path) -> list[int]:
    numbers = {
        r["jws"]: r["number"] for r in db_rows(service.db, "SELECT jws, number FROM receipts")
    }
    with path.open("rb") as handle:
        return [numbers[jws] for _group, jws in stream_dep(handle)]


def _stepped_back(service: ReceiptService, backups: DepBackups, clock: FrozenClock) -> int:
    """Q1 is backed up by a clock minutes fast; NTP steps it back to 23:59:50 on 31 March
    and a sale is dated in Q1: its number."""
    clock.set(FAST)
    [first] = backups.run_due()
    assert (first.quarter, first.last_number) == ("2026-Q1", 1)
    clock.set(Q1_ENDS - dt.timedelta(seconds=10))
    late = service.issue(sale(request_id="after-the-step")).number
    clock.set(Q1_ENDS + dt.timedelta(hours=1))
    return late


class TestLateReceipts:
    def test_a_supplementary_backup_holds_the_whole_quarter_again(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The next run finds the receipt, logs an ERROR, journals it and writes
        ``..._2026-Q1.2.dep.json`` (read-only, recorded like the first) with every receipt
        of Q1; the first file stays as it was, and later runs write nothing more."""
        late = _stepped_back(service, backups, clock)
        with caplog.at_level(logging.ERROR, logger="agent.backup"):
            [record] = backups.run_due()
        path = Path(record.path)
        assert path.name == f"{REGISTER}_2026-Q1.2.dep.json"
        # March's Monatsbeleg (due from 23:59) came before the late sale, and is late too
        assert (record.quarter, record.receipts, record.last_number) == ("2026-Q1.2", 3, late)
        assert _numbers(service, path) == [1, late - 1, late]
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert _numbers(service, path.with_name(f"{REGISTER}_2026-Q1.dep.json")) == [1]
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert f"receipt {late - 1}" in error.getMessage()
        assert "2026-Q1" in error.getMessage()
        [event] = journal_events(service.db, "dep.backup_late")
        assert event == {
            "quarter": "2026-Q1",
            "backup": "2026-Q1",
            "last_number": 1,
            "late": late - 1,
        }
        assert backups.run_due() == []
        with service.db.read_connection() as conn:
            assert [r.quarter for r in list_backups(conn)] == ["2026-Q1", "2026-Q1.2"]

    def test_a_supplement_that_cannot_be_written_is_a_failure_said_once(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
    ) -> None:
        """While the supplement fails, it is the register's backup failure (as the status
        shows it), retried each run; the late receipt is journaled once, also by the job of
        a restarted process."""
        _stepped_back(service, backups, clock)
        directory = backup_dir / REGISTER
        directory.rename(backup_dir / "moved")
        directory.write_text("x")
        for _ in range(2):
            with pytest.raises(BackupFailed, match="not a directory") as failed:
                backups.run_due()
            assert failed.value.quarter == "2026-Q1.2"
        assert backups.failures[REGISTER].quarter == "2026-Q1.2"
        assert len(journal_events(service.db, "dep.backup_late")) == 1
        restarted = DepBackups(service.db, backup_dir, clock)  # a new process: says it again
        with pytest.raises(BackupFailed, match="not a directory"):
            restarted.run_due()
        assert len(journal_events(service.db, "dep.backup_late")) == 1  # journaled once
        directory.unlink()
        (backup_dir / "moved").rename(directory)
        [record] = backups.run_due()
        assert record.quarter == "2026-Q1.2"
        assert REGISTER not in backups.failures

    def test_the_supplement_waits_until_the_quarter_is_over_again(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """While the clock is back in the quarter, each sale may be dated in it: the runs
        then write nothing, and one supplement holds them all once the quarter is over."""
        clock.set(FAST)
        backups.run_due()
        late = []
        for minute in range(3):  # 23:56 to 23:58 (from 23:59 March's closing is due)
            clock.set(Q1_ENDS - dt.timedelta(minutes=4 - minute))
            late.append(service.issue(sale(request_id=f"late-{minute}")).number)
            assert backups.run_due() == []
        clock.set(Q1_ENDS + backup_module.QUARTER_GRACE + dt.timedelta(seconds=1))
        [record] = backups.run_due()
        assert record.quarter == "2026-Q1.2"
        assert _numbers(service, Path(record.path))[-3:] == late
        assert backups.run_due() == []

    def test_the_status_says_overdue_while_a_late_receipt_has_no_backup(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """With no job writing the supplement ([backup] enabled = false), the quarter
        counts as not backed up: overdue 7 days after its end, until the supplement is
        written (by hand: backup run)."""
        _stepped_back(service, backups, clock)
        clock.set(Q1_ENDS + dt.timedelta(days=7, seconds=1))
        with service.db.read_connection() as conn:
            assert backup_statuses(conn, clock.now(), {})[REGISTER].overdue is True
        [record] = backups.run_due()
        assert record.quarter == "2026-Q1.2"
        with service.db.read_connection() as conn:
            assert backup_statuses(conn, clock.now(), {})[REGISTER].overdue is False

"""A quarter's supplementary backups (``2026-Q1.2``, ``2026-Q1.3``...) are ordered by
number, not as text, where ``2026-Q1.10`` comes before ``2026-Q1.2``: in ``backup list``
(and its ``--json``), in the records the job reads, and as the status's ``last``.

The eleven supplements are made the real way (agent/backup.py): Q1 is backed up by a
clock minutes fast, then, eleven times, the clock is stepped back into Q1, a sale is
dated there and the next run after the quarter's end writes the next supplement."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent import backup as backup_module
from agent.backup import DepBackups, backup_statuses, list_backups
from agent.clock import FrozenClock
from agent.receipts import ReceiptService
from factories import Run, cli_run, expect, sale

REGISTER = "KASSE-1"
Q1_ENDS = dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC)  # 1 April 00:00 in Vienna (CEST)
FAST = Q1_ENDS + backup_module.QUARTER_GRACE + dt.timedelta(seconds=30)
Q2_ENDS = dt.datetime(2026, 6, 30, 22, 0, tzinfo=dt.UTC)
SUPPLEMENTS = 11
IN_ORDER = ["2026-Q1", *(f"2026-Q1.{part}" for part in range(2, SUPPLEMENTS + 2))]


@pytest.fixture(name="run")
def _run() -> Run:
    return cli_run()


@pytest.fixture(name="backups")
def _backups(service: ReceiptService, tmp_path: Path, clock: FrozenClock) -> DepBackups:
    """KASSE-1 (created 2026-03-02) with its Q1 backup and eleven supplements of it."""
    backups = DepBackups(service.db, tmp_path / "backups", clock)
    clock.set(FAST)
    [first] = backups.run_due()
    assert first.quarter == "2026-Q1"
    for step in range(SUPPLEMENTS):
        clock.set(Q1_ENDS - dt.timedelta(seconds=50 - step))  # NTP steps it back into Q1
        service.issue(sale(request_id=f"late-{step}"))
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [supplement] = backups.run_due()
        assert supplement.quarter == f"2026-Q1.{step + 2}"
    return backups


class TestSupplementsInOrder:
    def test_the_records_are_in_order_of_their_numbers(
        self, service: ReceiptService, backups: DepBackups
    ) -> None:
        with service.db.read_connection() as conn:
            assert [r.quarter for r in list_backups(conn)] == IN_ORDER
            assert [r.quarter for r in list_backups(conn, REGISTER)] == IN_ORDER

    def test_the_status_shows_the_latest_supplement_as_last(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """``last`` is ``2026-Q1.12``, the backup written last (not ``2026-Q1.9``); after
        Q2's it is Q2's."""
        with service.db.read_connection() as conn:
            last = backup_statuses(conn, clock.now(), {})[REGISTER].last
        assert last is not None
        assert last.quarter == IN_ORDER[-1]
        clock.set(Q2_ENDS + dt.timedelta(hours=1))
        [q2] = backups.run_due()
        with service.db.read_connection() as conn:
            last = backup_statuses(conn, clock.now(), {})[REGISTER].last
            assert [r.quarter for r in list_backups(conn)] == [*IN_ORDER, "2026-Q2"]
        assert last == q2

    def test_backup_list_shows_them_in_order(
        self, run: Run, service: ReceiptService, backups: DepBackups, data_dir: Path
    ) -> None:
        """The command's table and its --json list the quarter's backups by number."""
        listed = expect(run("backup", "list", "--json", "--data-dir", data_dir), 0)
        assert [r["quarter"] for r in json.loads(listed.stdout)] == IN_ORDER
        table = expect(run("backup", "list", "--data-dir", data_dir), 0).stdout
        shown = [word for word in table.split() if word.startswith("2026-Q1")]
        assert shown == IN_ORDER

"""The print_jobs table: the worker and the status find the open jobs without reading
the printed ones (the history of a till that has sold for years)."""

from __future__ import annotations

import re

import pytest

from agent.printing.jobs import MISSING, OPEN_JOBS, QUEUED_PRINTS
from agent.receipts import ReceiptService

REGISTER = "KASSE-1"


class TestTheOpenJobs:
    HISTORY = 20_000

    @pytest.fixture(name="history")
    def _history(self, service: ReceiptService) -> None:
        """Many printed jobs, as after years of selling, and two open ones."""
        with service.db.write_connection().transaction() as conn:
            conn.execute(
                "INSERT INTO print_jobs (register_id, number, copy, data, state, attempts,"
                " created_at) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                " WHERE i < ?) SELECT ?, i + 1, 0, x'', 'printed', 1, '' FROM n",
                (self.HISTORY, REGISTER),
            )
            for number, state in ((self.HISTORY + 2, "failed"), (self.HISTORY + 3, "queued")):
                conn.execute(
                    "INSERT INTO print_jobs (register_id, number, copy, data, state, attempts,"
                    " created_at) VALUES (?, ?, 0, x'00', ?, 0, '')",
                    (REGISTER, number, state),
                )

    @pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
    @pytest.mark.usefixtures("history")
    def test_the_worker_and_the_status_read_only_the_open_jobs(
        self, service: ReceiptService, analyzed: bool
    ) -> None:
        """EXPLAIN QUERY PLAN: the worker's queue and the status's count go through
        ``ix_print_jobs_open`` (only the open jobs) and the scan for receipts without a
        job seeks the unique index; print_jobs is never scanned, also after ANALYZE."""
        with service.db.write_connection().transaction() as conn:
            if analyzed:
                conn.execute("ANALYZE")
            plans = {
                query: [
                    str(row[3])
                    for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", (1,) * query.count("?"))
                ]
                for query in (OPEN_JOBS, QUEUED_PRINTS, MISSING)
            }
            open_jobs = conn.execute(OPEN_JOBS, (100,)).fetchall()
        for query in (OPEN_JOBS, QUEUED_PRINTS):
            assert plans[query] == ["SCAN print_jobs USING INDEX ix_print_jobs_open"], plans
        on_jobs = [s for s in plans[MISSING] if re.match(r"(SCAN|SEARCH) p\b", s)]
        assert on_jobs, plans[MISSING]
        assert all(re.match(r"SEARCH p USING (COVERING )?INDEX ", s) for s in on_jobs), on_jobs
        assert [row["number"] for row in open_jobs] == [self.HISTORY + 2, self.HISTORY + 3]

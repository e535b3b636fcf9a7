"""The closing job and a register closed by its Schlussbeleg.

A closed register issues nothing more, Monatsbelege included; the job that issues every
register's due closings must pass it by, and must not stop at it: the registers after it
still owe theirs (rksv.md 6).
"""

from __future__ import annotations

import datetime as dt

from agent.clock import FrozenClock
from agent.receipts import ReceiptService, RegisterSetup
from factories import db_rows

UNIT = "dev"  # tests/conftest.py
MAY_1 = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)  # 10:00 in Vienna


def _receipts(service: ReceiptService, register_id: str) -> list[tuple[int, str, str | None]]:
    rows = db_rows(
        service.db,
        "SELECT number, kind, json_extract(document, '$.period') AS period FROM receipts"
        " WHERE register_id = ? ORDER BY number",
        register_id,
    )
    return [(int(r["number"]), str(r["kind"]), r["period"]) for r in rows]


def _journal_size(service: ReceiptService, register_id: str) -> int:
    rows = db_rows(service.db, "SELECT COUNT(*) FROM journal WHERE register_id = ?", register_id)
    return int(rows[0][0])


class TestClosingsPassAClosedRegisterBy:
    def test_the_job_closes_the_open_register_and_issues_nothing_on_the_closed_one(
        self, bare_service: ReceiptService, clock: FrozenClock
    ) -> None:
        """A-1 is closed in March, B-1 stays open: on 1 May the job issues B-1's
        Monatsbelege for March and April and nothing on A-1, without an error."""
        bare_service.init_register(RegisterSetup("A-1", [UNIT]))
        bare_service.init_register(RegisterSetup("B-1", [UNIT]))
        bare_service.issue_special("A-1", "closing")
        closed = _receipts(bare_service, "A-1")
        assert [kind for _, kind, _ in closed] == ["start", "closing"]
        journal = _journal_size(bare_service, "A-1")
        clock.set(MAY_1)

        issued = bare_service.run_closings()

        assert [(r.register_id, r.kind, r.number) for r in issued] == [
            ("B-1", "monthly", 2),
            ("B-1", "monthly", 3),
        ]
        assert _receipts(bare_service, "B-1")[1:] == [
            (2, "monthly", "2026-03"),
            (3, "monthly", "2026-04"),
        ]
        assert _receipts(bare_service, "A-1") == closed
        assert _journal_size(bare_service, "A-1") == journal
        assert bare_service.run_closings() == []  # the next tick: nothing more is due

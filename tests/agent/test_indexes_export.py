"""A DEP export of a range of dates (``export dep --from/--to``) reads the receipts of
that range, found by number (dates never go back within a register), not every receipt
of the register filtered by date."""

from __future__ import annotations

import datetime as dt
import io
import re
import sqlite3

import pytest
from sqlalchemy.dialects import sqlite as sqlite_dialect

from agent.clock import FrozenClock
from agent.export import _AT_OR_AFTER, count_receipts, export_dep
from agent.receipts import ReceiptService
from factories import sale

REGISTER = "KASSE-1"


class TestExportRange:
    # local times in Vienna (UTC+1 in March): none on 4 March, some in a day's first and
    # last minute
    SOLD = ("03-02 11:30", "03-02 23:59", "03-03 00:00", "03-03 12:00", "03-03 23:59")
    SOLD += ("03-05 00:00", "03-05 00:01", "03-05 18:00", "03-06 09:00", "03-06 23:59")

    @pytest.fixture(name="days")
    def _days(self, service: ReceiptService, clock: FrozenClock) -> None:
        """The Startbeleg on 2 March at 11:00, then a sale at each of :data:`SOLD`."""
        for i, local in enumerate(self.SOLD):
            at = dt.datetime.fromisoformat(f"2026-{local}+01:00")
            clock.set(at.astimezone(dt.UTC))
            service.issue(sale(request_id=f"s{i}"))

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (dt.date(2026, 3, 2), dt.date(2026, 3, 2)),
            (dt.date(2026, 3, 3), dt.date(2026, 3, 5)),
            (dt.date(2026, 3, 4), dt.date(2026, 3, 4)),
            (dt.date(2026, 3, 4), None),
            (None, dt.date(2026, 3, 3)),
            (dt.date(2026, 1, 1), dt.date(2026, 3, 1)),
            (dt.date(2026, 3, 7), dt.date(2026, 12, 31)),
            (dt.date(2026, 3, 5), dt.date(2026, 3, 3)),
            (None, dt.date.max),
        ],
    )
    @pytest.mark.usefixtures("days")
    def test_a_range_of_dates_exports_the_receipts_dated_in_it(
        self, service: ReceiptService, start: dt.date | None, end: dt.date | None
    ) -> None:
        """The numbers the bisection finds are those of the receipts dated from ``start``
        to ``end``, inclusive: the same receipts a filter on their dates selects."""
        low = "" if start is None else start.isoformat()
        high = "9" if end is None or end == dt.date.max else (end + dt.timedelta(1)).isoformat()
        with sqlite3.connect(service.db.path) as conn:
            dated = conn.execute(
                "SELECT jws FROM receipts WHERE register_id = ? AND issued_at >= ?"
                " AND issued_at < ? ORDER BY number",
                (REGISTER, low, high),
            ).fetchall()
        out = io.StringIO()
        assert export_dep(service.db, REGISTER, out, start=start, end=end) == len(dated)
        assert count_receipts(service.db, REGISTER, start=start, end=end) == len(dated)
        for (jws,) in dated:
            assert jws in out.getvalue()


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
def test_a_step_of_the_bisection_seeks_one_receipt(service: ReceiptService, analyzed: bool) -> None:
    """A step of the export's bisection seeks one receipt by number (the index on
    register and number), also after ANALYZE."""
    for i in range(30):
        service.issue(sale(request_id=f"s{i}"))
    sql = str(_AT_OR_AFTER.compile(dialect=sqlite_dialect.dialect()))
    with service.db.write_connection().transaction() as conn:
        if analyzed:
            conn.execute("ANALYZE")
        plan = [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (REGISTER, 5, 1, 0))]
    assert len(plan) == 1, plan
    assert re.match(r"SEARCH receipts USING INDEX \w+ \(register_id=\? AND number>\?\)", plan[0])

"""A sale of a new month comes after the closing of the month before it.

The Monatsbeleg is the turnover counter at the month's end (rksv.md 6). The closing job
runs on a timer, and at the service's start it runs beside the spool and the API: a sale
that arrives first issues its register's due closings itself, in order, before its own
receipt. A Schlussbeleg, after which nothing is issued, does the same.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from agent.clock import FrozenClock
from agent.errors import RegisterStateError, WaitsForUnit
from agent.receipts import ReceiptService
from agent.signing.flaky import FlakyUnit
from factories import db_rows, sale

REGISTER = "KASSE-1"  # created 2 March 2026 (tests/conftest.py)
APRIL_2 = dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC)
JUNE_3 = dt.datetime(2026, 6, 3, 8, 0, tzinfo=dt.UTC)


def _kinds(service: ReceiptService) -> list[tuple[int, str, int]]:
    rows = db_rows(
        service.db,
        "SELECT number, kind, turnover_cents FROM receipts WHERE register_id = ? ORDER BY number",
        REGISTER,
    )
    return [(int(r["number"]), str(r["kind"]), int(r["turnover_cents"])) for r in rows]


class TestSalesAfterAMonthEnd:
    def test_the_first_sale_of_a_month_issues_the_monatsbeleg_before_itself(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        service.issue(sale(request_id="march"))
        clock.set(APRIL_2)  # the closing job has not run: the sale comes first
        april = service.issue(sale(request_id="april"))
        assert april.number == 4
        assert _kinds(service) == [
            (1, "start", 0),
            (2, "standard", 1670),
            (3, "monthly", 1670),  # March's counter: without April's sale
            (4, "standard", 3340),
        ]
        service.issue(sale(request_id="april-2"))
        assert service.run_closings() == []
        assert [k for _, k, _ in _kinds(service)].count("monthly") == 1

    def test_the_months_the_till_was_off_are_closed_in_order(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        clock.set(JUNE_3)
        service.issue(sale(request_id="june"))
        documents = db_rows(
            service.db,
            "SELECT json_extract(document, '$.period') AS period FROM receipts"
            " WHERE kind = 'monthly' ORDER BY number",
        )
        assert [r["period"] for r in documents] == ["2026-03", "2026-04", "2026-05"]
        assert _kinds(service)[-1][1] == "standard"

    def test_a_repeated_request_after_the_month_end_returns_the_stored_receipt(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        first = service.issue(sale(request_id="march"))
        clock.set(APRIL_2)
        again = service.issue(sale(request_id="march"))
        assert again.number == first.number
        assert [k for _, k, _ in _kinds(service)] == ["start", "standard", "monthly"]

    def test_a_jahresbeleg_that_waits_for_the_unit_does_not_stop_the_sales(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        """December's closing must be signed: with the unit down it waits, and the sales
        of January go on (with the failure marker) instead of waiting behind it."""
        clock.set(dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC))  # 00:30 in Vienna
        flaky.mode = "down"
        result = service.issue(sale(request_id="new-year"))
        assert result.signature_state == "fallback"
        kinds = [k for _, k, _ in _kinds(service)]
        assert "yearly" not in kinds
        assert kinds.count("monthly") == 9  # March to November
        assert [w["kind"] for w in service.waiting(REGISTER)] == ["yearly"]

    def test_a_closing_that_falls_due_while_the_sale_waits_comes_first(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Another write transaction (e.g. a recovery signing a remedy) holds the writer
        across 23:59: the sale that looked at 23:58:50 is issued after midnight, after
        March's Monatsbeleg, not before it."""
        clock.set(dt.datetime(2026, 3, 31, 21, 58, 50, tzinfo=dt.UTC))  # 23:58:50 in Vienna
        service.issue(sale(request_id="before"))
        holding, release = threading.Event(), threading.Event()

        def hold() -> None:
            with service.db.write_connection().transaction():
                holding.set()
                assert release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        results: list[int] = []
        seller = threading.Thread(
            target=lambda: results.append(service.issue(sale(request_id="late")).number)
        )
        seller.start()
        time.sleep(0.3)  # the sale looked for due closings and waits for the writer
        clock.set(dt.datetime(2026, 3, 31, 22, 0, 30, tzinfo=dt.UTC))  # 00:00:30 on 1 April
        release.set()
        holder.join(10)
        seller.join(10)
        assert results == [4]
        assert [k for _, k, _ in _kinds(service)] == ["start", "standard", "monthly", "standard"]


class TestTheSchlussbeleg:
    def test_it_closes_the_months_that_are_over_first(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        clock.set(dt.datetime(2027, 1, 3, 9, 0, tzinfo=dt.UTC))
        closing = service.issue_special(REGISTER, "closing")
        kinds = [k for _, k, _ in _kinds(service)]
        assert kinds[-2:] == ["yearly", "closing"]
        assert kinds.count("monthly") == 9
        assert closing.number == len(kinds)

    def test_it_is_refused_while_a_due_closing_cannot_be_issued(
        self, service: ReceiptService, clock: FrozenClock, flaky: FlakyUnit
    ) -> None:
        clock.set(dt.datetime(2027, 1, 3, 9, 0, tzinfo=dt.UTC))
        flaky.mode = "down"
        with pytest.raises(WaitsForUnit):
            service.issue_special(REGISTER, "closing")
        assert "closing" not in [k for _, k, _ in _kinds(service)]

    def test_it_is_refused_while_a_month_that_is_over_has_no_closing(
        self, service: ReceiptService, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The Schlussbeleg's own check, for a closing that did not come before it."""
        monkeypatch.setattr(ReceiptService, "_close_due", lambda *_a, **_k: None)
        clock.set(APRIL_2)
        with pytest.raises(RegisterStateError, match="Monatsbeleg of 2026-03 is due"):
            service.issue_special(REGISTER, "closing")
        assert [k for _, k, _ in _kinds(service)] == ["start"]

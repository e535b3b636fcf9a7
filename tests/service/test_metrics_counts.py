"""What the receipt path counts for ``GET /metrics``: the receipts committed, by
register, kind and signature state (:class:`agent.metrics.ReceiptCounts`, following each
write transaction's fate), and the latency of the durable commits
(:class:`storage.writer.WriteConnection`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest

from agent.errors import StorageError
from agent.receipt_records import Draft
from agent.receipts import ReceiptService
from agent.registers import open_register
from factories import disk_full, sale
from storage.writer import COMMIT_BUCKETS_S


class TestReceiptCounts:
    def test_only_committed_receipts_are_counted(
        self, service: ReceiptService, query: Callable[..., list[sqlite3.Row]]
    ) -> None:
        """Sales until the disk is full: the one refused is not counted; the counts are
        the receipts the database holds, by register, kind and signature state."""
        disk_full(service)
        with pytest.raises(StorageError, match="disk is full"):  # noqa: PT012 - until full
            for i in range(500):
                service.issue(sale(request_id=f"f{i}"))
        disk_full(service, full=False)
        service.issue(sale(request_id="room"))
        stored = query(
            "SELECT register_id, kind, signature_state, count(*) FROM receipts GROUP BY 1, 2, 3"
        )
        assert service.issued.snapshot() == {(r[0], r[1], r[2]): r[3] for r in stored}

    def test_a_receipt_stored_in_a_transaction_that_rolls_back_is_not_counted(
        self, service: ReceiptService
    ) -> None:
        """A Nullbeleg stored, then the transaction fails: neither the receipt nor its
        count remains; the next receipt counts."""
        before = service.issued.snapshot()
        issuing = service._issuing
        with pytest.raises(RuntimeError), issuing.transaction() as conn:  # noqa: PT012
            issuing.issue_in(conn, open_register(conn, "KASSE-1"), Draft("KASSE-1", "null"))
            raise RuntimeError("after the receipt was stored")
        assert service.issued.snapshot() == before
        assert service.zero_receipt("KASSE-1").result.number == 2
        assert service.issued.snapshot() == {**before, ("KASSE-1", "null", "signed"): 1}


class TestCommitLatency:
    def test_durable_commits_fill_the_buckets_and_bookkeeping_does_not(
        self, service: ReceiptService
    ) -> None:
        """A receipt's commit lands in a bucket (and the sum); a transaction committed
        without an fsync (``durable=False``, print bookkeeping) does not."""
        writer = service.db.write_connection()
        assert len(writer.durable_buckets) == len(COMMIT_BUCKETS_S) + 1
        before = sum(writer.durable_buckets)
        service.issue(sale())
        after = sum(writer.durable_buckets)
        assert after > before
        assert writer.durable_seconds > 0
        with writer.transaction(durable=False) as conn:
            conn.execute("UPDATE registers SET last_closing = last_closing")
        assert sum(writer.durable_buckets) == after

"""What the receipt path counts for ``GET /metrics``: the receipts committed, by
register, kind and signature state (:class:`agent.metrics.ReceiptCounts`, following each
write transaction's fate), and the latency of the durable commits
(:class:`storage.writer.WriteConnection`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import FrozenClock
from agent.errors import StorageError
from agent.fakes.chain_service import ChainServiceFake
from agent.receipt_records import Draft
from agent.receipts import ReceiptService, RegisterSetup
from agent.registers import open_register
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import add_unit, disk_full, sale
from storage import TillDB
from storage.writer import COMMIT_BUCKETS_S

CHAIN_TOKEN = "test-token"
Query = Callable[..., list[sqlite3.Row]]


@pytest.fixture(name="chain_service")
def _chain_service(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, tmp_path: Path
) -> Iterator[ReceiptService]:
    """A receipt service with register KASSE-1 on a chain unit (the fake on loopback),
    whose signing intents commit the transaction so far."""
    with ChainServiceFake(CHAIN_TOKEN, key_dir=tmp_path / "chain-key") as chain:
        token_file = tmp_path / "chain-token"
        token_file.write_text(CHAIN_TOKEN)
        config = UnitConfig(
            id="chain", kind="chain", zda="AT1", url=chain.url, token_file=token_file
        )
        add_unit(db, registry, config)
        service = ReceiptService(db, registry, clock=clock, sign_timeout=1.5)
        service.init_register(RegisterSetup("KASSE-1", ["chain"]))
        yield service


def _stored(query: Query) -> dict[tuple[str, str, str], int]:
    rows = query(
        "SELECT register_id, kind, signature_state, count(*) FROM receipts GROUP BY 1, 2, 3"
    )
    return {(r[0], r[1], r[2]): r[3] for r in rows}


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
        assert service.issued.snapshot() == _stored(query)

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

    def test_receipts_an_intent_committed_count_though_the_transaction_fails(
        self, chain_service: ReceiptService, query: Query
    ) -> None:
        """Two Nullbelege on a chain unit in one transaction, then it fails: the second
        one's signing intent committed the first (``commit_so_far``), which stays in the
        database and in the counts; the second is in neither."""
        issuing = chain_service._issuing
        before = chain_service.issued.snapshot()
        with pytest.raises(RuntimeError), issuing.transaction() as conn:  # noqa: PT012
            issuing.issue_in(conn, open_register(conn, "KASSE-1"), Draft("KASSE-1", "null"))
            issuing.issue_in(conn, open_register(conn, "KASSE-1"), Draft("KASSE-1", "null"))
            raise RuntimeError("after two receipts were stored")
        assert chain_service.issued.snapshot() == _stored(query)
        assert chain_service.issued.snapshot() == {**before, ("KASSE-1", "null", "signed"): 1}


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

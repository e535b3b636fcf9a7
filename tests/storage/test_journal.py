"""The append-only, hash-chained journal (storage/journal.py) and invariant 7."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from agent.receipts import ReceiptService
from factories import sale
from storage import TillDB, make_engine
from storage.journal import GENESIS, append_event, canonical_json, event_hash, verify_journal
from storage.migrate import MIGRATED

Query = Callable[..., list[sqlite3.Row]]
AT = "2026-03-02T10:00:00+00:00"


def _verify(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return verify_journal(conn)


@pytest.fixture(name="sold")
def _sold(service: ReceiptService) -> ReceiptService:
    """KASSE-1 with a Startbeleg, three sales, a storno, a training and a null receipt."""
    for i in range(3):
        service.issue(sale(request_id=f"s{i}"))
    service.issue({"request_id": "st", "register": "KASSE-1", "kind": "storno", "voids": 3})
    service.issue(sale(request_id="tr", kind="training"))
    service.issue({"request_id": "nb", "register": "KASSE-1", "kind": "null"})
    return service


@pytest.fixture(name="copy")
def _copy(sold: ReceiptService, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A consistent copy of the till database without the append-only triggers, to tamper with."""
    path = tmp_path / "copy.sqlite3"
    source = sqlite3.connect(sold.db.path)
    target = sqlite3.connect(path, isolation_level=None)
    try:
        source.backup(target)
    finally:
        source.close()
    for (name,) in target.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        target.execute(f"DROP TRIGGER {name}")
    yield target
    target.close()


@pytest.fixture(name="copy_engine")
def _copy_engine(copy: sqlite3.Connection, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(tmp_path / "copy.sqlite3")
    yield engine
    engine.dispose()


class TestAppendEvent:
    def test_the_first_event_chains_to_genesis(self, db: TillDB, query: Query) -> None:
        """Sequence 1 (a new till's: the migration that made its schema) carries the
        all-zero previous hash and a hash over its own fields; the next one chains to it."""
        (first,) = query("SELECT * FROM journal")
        assert (first["seq"], first["kind"], first["prev_hash"]) == (1, MIGRATED, GENESIS)
        assert first["hash"] == event_hash(1, first["at"], None, MIGRATED, first["data"], GENESIS)
        with db.write_connection().transaction() as conn:
            seq = append_event(conn, kind="test", register_id=None, data={"b": 1, "a": "x"}, at=AT)
        assert seq == 2
        row = query("SELECT * FROM journal WHERE seq = 2")[0]
        assert row["prev_hash"] == first["hash"]
        assert row["data"] == '{"a":"x","b":1}'
        assert row["hash"] == event_hash(2, AT, None, "test", row["data"], first["hash"])

    def test_each_event_carries_the_previous_hash(self, db: TillDB, query: Query) -> None:
        """Sequences go on 2, 3, 4 and every prev_hash is the hash of the event before."""
        with db.write_connection().transaction() as conn:
            seqs = [
                append_event(conn, kind="test", register_id="R", data={"i": i}, at=AT)
                for i in range(3)
            ]
        assert seqs == [2, 3, 4]
        rows = query("SELECT seq, prev_hash, hash FROM journal ORDER BY seq")
        assert [r["prev_hash"] for r in rows] == [GENESIS, *(r["hash"] for r in rows[:-1])]
        assert _verify(db.engine) == []

    def test_a_rolled_back_transaction_leaves_no_event(self, db: TillDB, query: Query) -> None:
        """An event is part of the caller's transaction: if it fails, the event is gone too."""

        def append_then_fail() -> None:
            with db.write_connection().transaction() as conn:
                append_event(conn, kind="test", register_id=None, data={}, at=AT)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            append_then_fail()
        assert [r["kind"] for r in query("SELECT kind FROM journal")] == [MIGRATED]

    def test_canonical_json_is_sorted_compact_and_keeps_unicode(self) -> None:
        """The hashed form has sorted keys, no spaces and raw UTF-8 (no \\u escapes)."""
        assert canonical_json({"b": [1, 2], "a": "Müsli"}) == '{"a":"Müsli","b":[1,2]}'


class TestJournalOfReceipts:
    def test_the_chain_is_intact_after_issuing_receipts(self, sold: ReceiptService) -> None:
        """Start, sales, storno, training and null receipts leave a verifiable journal."""
        assert _verify(sold.db.engine) == []

    def test_every_receipt_has_its_issued_event(self, sold: ReceiptService, query: Query) -> None:
        """Each receipt points at a receipt.issued event that holds the same JWS and number."""
        receipts = query("SELECT number, jws, journal_seq FROM receipts ORDER BY number")
        assert [r["number"] for r in receipts] == list(range(1, 8))
        events = {
            e["seq"]: json.loads(e["data"])
            for e in query("SELECT seq, data FROM journal WHERE kind = 'receipt.issued'")
        }
        assert len(events) == len(receipts)
        for receipt in receipts:
            event = events[receipt["journal_seq"]]
            assert (event["number"], event["jws"]) == (receipt["number"], receipt["jws"])

    def test_initialization_is_journaled_before_the_startbeleg(
        self, query: Query, sold: object
    ) -> None:
        """The register.initialized event comes right before the Startbeleg's event."""
        kinds = [r["kind"] for r in query("SELECT kind FROM journal ORDER BY seq")]
        start = kinds.index("register.initialized")
        assert kinds[start + 1] == "receipt.issued"


class TestAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE receipts SET jws = 'x' WHERE number = 2",
            "UPDATE receipts SET signature_state = 'fallback'",
            "DELETE FROM receipts WHERE number = 2",
            "DELETE FROM receipts",
            "UPDATE journal SET data = '{}' WHERE seq = 2",
            "DELETE FROM journal WHERE seq = (SELECT max(seq) FROM journal)",
        ],
    )
    def test_updates_and_deletes_are_refused(
        self, sold: ReceiptService, query: Query, statement: str
    ) -> None:
        """Invariant 7: the database itself refuses to change or remove a receipt or an event."""
        before = query("SELECT * FROM receipts"), query("SELECT * FROM journal")
        conn = sqlite3.connect(sold.db.path, isolation_level=None)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        finally:
            conn.close()
        after = query("SELECT * FROM receipts"), query("SELECT * FROM journal")
        assert [list(map(tuple, rows)) for rows in after] == [
            list(map(tuple, rows)) for rows in before
        ]

    def test_the_writer_engine_is_refused_too(self, sold: ReceiptService) -> None:
        """Going through SQLAlchemy does not get around the triggers."""
        with pytest.raises(IntegrityError, match="append-only"), sold.db.writer.begin() as conn:
            conn.execute(text("DELETE FROM journal"))
        assert _verify(sold.db.engine) == []

    def test_the_register_state_stays_mutable(self, sold: ReceiptService, query: Query) -> None:
        """Only receipts and journal are append-only; the register row is running state."""
        with sold.db.writer.begin() as conn:
            conn.execute(text("UPDATE registers SET last_issued_at = last_issued_at"))
        assert query("SELECT last_number FROM registers")[0]["last_number"] == 7


class TestTampering:
    def test_the_untouched_copy_verifies(self, copy_engine: Engine) -> None:
        """The copy (triggers dropped, nothing else changed) still verifies."""
        assert _verify(copy_engine) == []

    def test_changed_event_data_is_detected(
        self, copy: sqlite3.Connection, copy_engine: Engine
    ) -> None:
        """Editing the amounts inside one event breaks that event's hash."""
        seq, data = copy.execute(
            "SELECT seq, data FROM journal WHERE kind = 'receipt.issued' ORDER BY seq LIMIT 1 "
            "OFFSET 1"
        ).fetchone()
        forged = data.replace('"turnover_cents":1670', '"turnover_cents":1000')
        assert forged != data
        copy.execute("UPDATE journal SET data = ? WHERE seq = ?", (forged, seq))
        assert _verify(copy_engine) == [f"seq {seq}: hash does not match the event's content"]

    def test_a_rehashed_forgery_breaks_the_next_link(
        self, copy: sqlite3.Connection, copy_engine: Engine
    ) -> None:
        """A forger who also recomputes the event's hash is caught by the following event."""
        row = copy.execute("SELECT * FROM journal WHERE seq = 3").fetchone()
        seq, at, register_id, kind, _data, prev, _hash = row
        forged = canonical_json({"forged": True})
        digest = event_hash(seq, at, register_id, kind, forged, prev)
        copy.execute("UPDATE journal SET data = ?, hash = ? WHERE seq = 3", (forged, digest))
        assert _verify(copy_engine) == ["seq 4: prev_hash does not match the previous event"]

    def test_a_deleted_event_is_detected(
        self, copy: sqlite3.Connection, copy_engine: Engine
    ) -> None:
        """Removing an event from the middle leaves a gap and a broken link."""
        copy.execute("DELETE FROM journal WHERE seq = 4")
        problems = _verify(copy_engine)
        assert "seq 5: expected 4 (gap or reorder)" in problems
        assert "seq 5: prev_hash does not match the previous event" in problems

    def test_the_original_is_unaffected(
        self, sold: ReceiptService, copy: sqlite3.Connection, copy_engine: Engine
    ) -> None:
        """Tampering with the copy does not touch the till database."""
        copy.execute("DELETE FROM journal")
        assert _verify(sold.db.engine) == []

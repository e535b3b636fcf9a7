"""The Storno that voided a superseded receipt is stored with its resolution (0010).

The remedy writes it (``receipt_resolutions.voided_number``) as it journals it
(``receipt.superseded``, ``voided_by``), and the views read it there. A till database of
0009, whose resolutions have no such column, gets it from the journal when it is
upgraded, and shows each remedied receipt as it did. The chain service is the real fake
on loopback; the database is a file, downgraded and upgraded by Alembic.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from agent.signing.registry import UnitRegistry
from factories import Run, db_rows, expect, journal_events, sale
from storage import DB_FILE, TillDB, make_engine
from storage.journal import verify_journal
from storage.migrate import current_revision, downgrade_to, head_revision

REGISTER = "KASSE-1"
TOKEN = "test-token-0123456789abcdef"
# (number, resolution, replacement_number, voided_number) of the till _remedied makes
STORED = [
    (2, "superseded", None, 3),  # voided by the POS's Storno 3: not reissued
    (5, "superseded", 9, 8),  # the remedy's Storno 8, then its reissue 9
    (10, "adopted", None, None),  # the chain service had signed it
]
SHOWN = {2: ("superseded", None, 3), 5: ("superseded", 9, 8), 10: ("adopted", None, None)}


@pytest.fixture(name="chain_hold")
def _chain_hold() -> float:
    """A lost answer holds its connection briefly: the signing times out at 1.5 s anyway."""
    return 0.2


def _lose(service: ReceiptService, chain: ChainServiceFake, request_id: str, mode: str) -> int:
    chain.mode = "lose_request" if mode == "request" else "lose_response"
    lost = service.issue(sale(request_id=request_id))
    assert lost.signature_state == "unsigned"
    chain.mode = "up"
    return lost.number


def _remedied(service: ReceiptService, chain: ChainServiceFake) -> None:
    """Three remedied sales: 2 voided by the POS (Storno 3, a fallback), 5 reissued after
    the remedy's Storno, 10 adopted (numbers as in :data:`STORED`)."""
    assert _lose(service, chain, "a", "request") == 2
    storno = service.issue({"request_id": "s", "register": REGISTER, "kind": "storno", "voids": 2})
    assert (storno.number, storno.signature_state) == (3, "fallback")
    assert [r.kind for r in service.recover(REGISTER) or []] == ["sammelbeleg"]
    assert _lose(service, chain, "b", "request") == 5
    issued = service.recover(REGISTER) or []
    assert [(r.number, r.kind) for r in issued] == [
        (6, "null"),
        (7, "sammelbeleg"),
        (8, "storno"),
        (9, "standard"),
    ]
    assert _lose(service, chain, "c", "response") == 10
    assert service.recover(REGISTER) is not None


def _stored(db: TillDB) -> list[tuple[object, ...]]:
    rows = db_rows(
        db,
        "SELECT number, resolution, replacement_number, voided_number FROM receipt_resolutions"
        " ORDER BY number",
    )
    return [tuple(r) for r in rows]


def _shown(service: ReceiptService) -> dict[int, ReceiptResult]:
    return {n: service.get(REGISTER, n) for n in SHOWN}


def _to_0009(db: TillDB, data_dir: Path) -> None:
    """Close the till and bring its database back to 0009 (no ``voided_number``)."""
    db.close()
    engine = make_engine(data_dir / DB_FILE)
    try:
        downgrade_to(engine, "0009")
        assert current_revision(engine) == "0009"
    finally:
        engine.dispose()
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(receipt_resolutions)")}
    assert "voided_number" not in columns


def test_the_remedy_stores_the_storno_with_the_resolution(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    """Each resolution holds the Storno its journal event names, and the views name it."""
    _remedied(chain_service, chain)
    assert _stored(chain_service.db) == STORED
    events = journal_events(chain_service.db, "receipt.superseded")
    assert [(e["number"], e.get("voided_by")) for e in events] == [(2, 3), (5, 8)]
    shown = _shown(chain_service)
    assert {n: (r.resolution, r.replaced_by, r.voided_by) for n, r in shown.items()} == SHOWN


def test_a_sale_reissued_without_a_storno_stores_none(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    """A training sale counts nothing, so its reissue needs no Storno: the resolution
    stores none, and the views name none."""
    chain.mode = "lose_request"
    lost = chain_service.issue(sale(request_id="t", kind="training"))
    chain.mode = "up"
    issued = chain_service.recover(REGISTER) or []
    assert [r.kind for r in issued] == ["null", "sammelbeleg", "training"]
    assert _stored(chain_service.db) == [(lost.number, "superseded", issued[-1].number, None)]
    got = chain_service.get(REGISTER, lost.number)
    assert (got.resolution, got.replaced_by, got.voided_by) == (
        "superseded",
        issued[-1].number,
        None,
    )


class TestAnUpgradeFrom0009:
    def test_the_resolutions_show_what_they_showed(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        data_dir: Path,
        registry: UnitRegistry,
        clock: FrozenClock,
        open_db: Callable[..., TillDB],
        run: Run,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Remedied at 0009, upgraded to head: the column holds what the journal names,
        GET, the POS's retry, the local API and `receipts show` give what they gave,
        the journal chain holds and the resolutions are append-only again."""
        _remedied(chain_service, chain)
        before = _shown(chain_service)
        _to_0009(chain_service.db, data_dir)

        db = open_db(data_dir)
        assert current_revision(db.engine) == head_revision()
        assert _stored(db) == STORED
        again = ReceiptService(db, registry, clock=clock, sign_timeout=1.5)
        assert _shown(again) == before
        assert again.issue(sale(request_id="a")) == before[2]  # the POS asks again
        assert not [r for r in caplog.records if r.name == "storage.migrate"]
        with db.engine.connect() as conn:
            assert verify_journal(conn) == []
        raw = sqlite3.connect(data_dir / DB_FILE)
        try:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                raw.execute("UPDATE receipt_resolutions SET voided_number = NULL")
        finally:
            raw.close()

        app = create_app(ServiceBackend(again), token=TOKEN)
        server: ApiServer
        with serve(app, port=0) as server:
            got = httpx.get(
                f"{server.url}/v1/receipts/{REGISTER}/5",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
        assert got.status_code == 200
        assert (got.json()["replaced_by"], got.json()["voided_by"]) == (9, 8)
        shown = expect(run("receipts", "show", REGISTER, "2", "--data-dir", data_dir), 0)
        assert "resolution: superseded, voided by 3" in shown.stdout
        as_json = expect(
            run("receipts", "show", REGISTER, "5", "--json", "--data-dir", data_dir), 0
        )
        assert json.loads(as_json.stdout)["voided_by"] == 8

    def test_an_event_that_names_no_storno_keeps_what_the_till_showed(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        data_dir: Path,
        open_db: Callable[..., TillDB],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A remedy of an earlier version journaled a voided sale without its Storno: the
        upgrade stores the Storno 0009's view showed (the first voiding it) and says so."""
        _remedied(chain_service, chain)
        _to_0009(chain_service.db, data_dir)
        with sqlite3.connect(data_dir / DB_FILE) as conn:  # as that version journaled it
            conn.execute("DROP TRIGGER journal_no_update")
            conn.execute(
                "UPDATE journal SET data = json_remove(data, '$.voided_by')"
                " WHERE kind = 'receipt.superseded' AND json_extract(data, '$.number') = 2"
            )
        with caplog.at_level(logging.WARNING, logger="storage.migrate"):
            db = open_db(data_dir)
        assert _stored(db) == STORED
        assert [r.getMessage() for r in caplog.records if r.name == "storage.migrate"] == [
            f"register {REGISTER}: the journal names no Storno as voiding superseded receipt"
            " 2, the till showed Storno 3: it keeps showing that"
        ]

"""A lost (unsigned) Monatsbeleg or Nullbeleg is no sale: only sales are reissued (DESIGN.md
invariant 5). A zero receipt may carry the failure marker (rksv.md 5), so it stands as it
is and the outage's Sammelbeleg is all recovery issues; no Nullbeleg, no reissue."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from agent.remedy import reissue_draft
from factories import journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"
MONTH_END = dt.datetime(2026, 3, 31, 21, 59, 30, tzinfo=dt.UTC)  # 23:59:30 in Vienna


def _findings(db: TillDB) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    return [f"{f.receipt}: {f.rule}" for f in report.findings]


def _lose(service: ReceiptService, chain: ChainServiceFake, clock: FrozenClock, kind: str) -> int:
    """Receipt 3, a ``kind`` zero receipt whose request the chain service lost."""
    assert service.issue(sale(request_id="a")).number == 2
    chain.mode = "lose_request"
    if kind == "monthly":
        clock.set(MONTH_END)
        [lost] = service.run_closings()
    else:
        lost = service.zero_receipt(REGISTER).result
    assert (lost.number, lost.kind, lost.signature_state) == (3, kind, "unsigned")
    chain.mode = "up"
    return lost.number


@pytest.mark.parametrize("kind", ["monthly", "null"])
def test_a_lost_zero_receipt_stands_and_only_the_sammelbeleg_follows(
    chain_service: ReceiptService, chain: ChainServiceFake, clock: FrozenClock, kind: str
) -> None:
    """Recovery issues the Sammelbeleg only; the lost receipt is resolved (kept, no
    replacement), a lost Monatsbeleg keeps its month closed, the next month closes as usual."""
    number = _lose(chain_service, chain, clock, kind)
    clock.set(dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC))
    issued = chain_service.recover(REGISTER)
    assert [(r.number, r.kind, r.signature_state) for r in issued or []] == [
        (4, "sammelbeleg", "signed")
    ]
    assert not chain_service.outages.is_open(REGISTER)
    assert chain_service.unsigned(REGISTER) == []
    assert journal_events(chain_service.db, "receipt.superseded") == [
        {"number": number, "jws": None, "replacement": None, "kept": True}
    ]
    assert chain_service.get(REGISTER, number).kind == kind  # nothing stands for it
    assert chain_service.recover(REGISTER) == []
    clock.set(dt.datetime(2026, 4, 30, 21, 59, 30, tzinfo=dt.UTC))
    closings = chain_service.run_closings()
    months = 1 if kind == "monthly" else 2  # after a lost Nullbeleg March is still open
    assert [(r.kind, r.signature_state) for r in closings] == [("monthly", "signed")] * months
    assert _findings(chain_service.db) == []


def test_only_a_sale_has_a_reissue_draft(chain_service: ReceiptService) -> None:
    """reissue_draft refuses any other receipt (here the Startbeleg): a zero receipt
    reissued would be a second one."""
    with chain_service.db.read_connection() as conn:
        row = conn.execute("SELECT * FROM receipts WHERE number = 1").fetchone()
        with pytest.raises(ValueError, match="only sales are reissued"):
            reissue_draft(conn, row)

"""The remedy of an unsigned receipt counts each sale once (agent/receipts.py).

An unsigned receipt stays in the DEP with the failure marker and counts (rksv.md 5). Its
remedy reissues the sale; before the replacement a signed Storno (STO, negative amounts,
counted, rksv.md 3) takes the unsigned original back, so the counter holds the sale once.
The chain service is the real fake on loopback, losing a request after it was sent.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest

from agent import recovery, storing
from agent.api_backend import ServiceBackend
from agent.at_rksv import STORNO_MARKER, decrypt_counter, split_jws
from agent.at_rksv.verify import verify_dep
from agent.contract import ReceiptResult
from agent.errors import InvalidSale
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService
from factories import db_rows, journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"
SALE_CENTS = 1670  # factories.sale()


@pytest.fixture(name="service")
def _service(chain_service: ReceiptService) -> ReceiptService:
    """Register KASSE-1 on the chain unit (tests/agent/conftest.py)."""
    return chain_service


def _counter(db: TillDB, result: ReceiptResult) -> int:
    """The decrypted turnover counter of a receipt that carries one."""
    [reg] = db_rows(db, "SELECT aes_key FROM registers WHERE id = ?", REGISTER)
    payload = split_jws(result.jws)[0]
    key = base64.b64decode(reg["aes_key"])
    return decrypt_counter(key, REGISTER, result.receipt_id, payload.counter)


def _register_turnover(db: TillDB) -> int:
    [reg] = db_rows(db, "SELECT turnover_cents FROM registers WHERE id = ?", REGISTER)
    return int(reg["turnover_cents"])


def _findings(db: TillDB) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    return [f"{f.receipt}: {f.rule}: {f.message}" for f in report.findings]


def _storno_of(number: int, request_id: str = "s") -> dict[str, Any]:
    """A POS Storno of receipt ``number`` on KASSE-1."""
    return {"request_id": request_id, "register": REGISTER, "kind": "storno", "voids": number}


def _voiding(db: TillDB, number: int) -> list[int]:
    """The receipts whose ``voids_number`` is ``number``."""
    rows = db_rows(
        db,
        "SELECT number FROM receipts WHERE register_id = ? AND voids_number = ? ORDER BY number",
        REGISTER,
        number,
    )
    return [r["number"] for r in rows]


def _lose_one(service: ReceiptService, chain: ChainServiceFake, body: dict[str, Any]) -> int:
    """Issue ``body`` while the service loses the request: an unsigned receipt."""
    chain.mode = "lose_request"
    result = service.issue(body)
    assert result.signature_state == "unsigned"
    chain.mode = "up"
    return result.number


class TestTheRemedyCountsEachSaleOnce:
    def test_three_sales_count_once_after_the_remedy(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Sale, unsigned sale, remedy, sale: the counter is three sales, not four."""
        service.issue(sale(request_id="a"))
        lost = _lose_one(service, chain, sale(request_id="b"))
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.signature_state) for r in issued] == [
            ("null", "signed"),
            ("sammelbeleg", "signed"),
            ("storno", "signed"),
            ("standard", "signed"),
        ]
        storno, replacement = issued[2:]
        assert _counter(service.db, replacement) == 2 * SALE_CENTS
        last = service.issue(sale(request_id="c"))
        assert _counter(service.db, last) == 3 * SALE_CENTS
        assert _register_turnover(service.db) == 3 * SALE_CENTS
        # the Storno refers to the unsigned receipt, like a POS storno, and is a real one
        assert split_jws(storno.jws)[0].counter == STORNO_MARKER
        [row] = db_rows(
            service.db,
            "SELECT * FROM receipts WHERE register_id = ? AND number = ?",
            REGISTER,
            storno.number,
        )
        assert row["voids_number"] == lost
        assert row["amount_normal"] == -1250
        assert row["amount_reduced1"] == -420
        assert f"Storno zu Beleg {lost}" in storno.lines
        assert _findings(service.db) == []

    def test_the_pos_asking_again_gets_the_replacement(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The repeated request_id returns the replacement, not the Storno or the original."""
        _lose_one(service, chain, sale(request_id="b"))
        issued = service.recover(REGISTER)
        assert issued is not None
        assert service.issue(sale(request_id="b")).number == issued[-1].number
        assert issued[-1].kind == "standard"

    def test_voiding_the_superseded_original_names_its_replacement(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The POS voids the receipt it was given (unsigned, since reissued): refused with
        rule voids-reissued naming the replacement, not "already voided" (a POS taking
        that for done would refund without a Storno); voiding the replacement works."""
        lost = _lose_one(service, chain, sale(request_id="b"))
        issued = service.recover(REGISTER)
        assert issued is not None
        replacement = issued[-1].number
        with pytest.raises(InvalidSale) as refused:
            service.issue(_storno_of(lost))
        assert (refused.value.field, refused.value.rule) == ("voids", "voids-reissued")
        assert f"void {replacement}" in refused.value.message
        storno = service.issue(_storno_of(replacement))
        assert _voiding(service.db, replacement) == [storno.number]
        assert _register_turnover(service.db) == 0
        assert _findings(service.db) == []

    def test_the_journal_shows_storno_and_supersession(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        lost = _lose_one(service, chain, sale(request_id="b"))
        issued = service.recover(REGISTER)
        assert issued is not None
        storno, replacement = issued[2:]
        events = [
            (r["kind"], json.loads(r["data"]))
            for r in db_rows(service.db, "SELECT kind, data FROM journal ORDER BY seq")
        ]
        stornos = [d for k, d in events if k == "receipt.issued" and d["kind"] == "storno"]
        assert [(d["number"], d["voids_number"]) for d in stornos] == [(storno.number, lost)]
        assert [d for k, d in events if k == "receipt.superseded"] == [
            {"number": lost, "jws": None, "replacement": replacement.number,
             "voided_by": storno.number}
        ]  # fmt: skip
        # a POS storno of the superseded receipt is refused, naming its replacement
        with pytest.raises(InvalidSale, match=f"void {replacement.number}"):
            service.issue(
                {"request_id": "s", "register": REGISTER, "kind": "storno", "voids": lost}
            )

    def test_a_superseded_storno_is_reversed_and_reissued(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """A POS storno that became unsigned: a Storno with positive amounts takes it back,
        then the storno is reissued; sale and storno count once each (net zero)."""
        first = service.issue(sale(request_id="a"))
        body = {"request_id": "s", "register": REGISTER, "kind": "storno", "voids": first.number}
        lost = _lose_one(service, chain, body)
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["null", "sammelbeleg", "storno", "storno"]
        reversal, replacement = issued[2:]
        rows = {
            r["number"]: r
            for r in db_rows(service.db, "SELECT * FROM receipts WHERE register_id = ?", REGISTER)
        }
        assert rows[reversal.number]["voids_number"] == lost
        assert rows[reversal.number]["amount_normal"] == 1250  # it takes a negative one back
        assert rows[replacement.number]["voids_number"] == first.number
        assert rows[replacement.number]["amount_normal"] == -1250
        assert _register_turnover(service.db) == 0
        assert _counter(service.db, service.issue(sale(request_id="c"))) == SALE_CENTS
        assert service.issue(body).number == replacement.number
        assert _findings(service.db) == []

    def test_a_training_receipt_is_reissued_without_a_storno(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Training receipts do not count, so there is nothing to take back."""
        _lose_one(service, chain, sale(request_id="t", kind="training"))
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["null", "sammelbeleg", "training"]
        assert _register_turnover(service.db) == 0
        assert _findings(service.db) == []


class TestTheRemedyIsExactlyOnce:
    def test_a_failure_between_storno_and_replacement_keeps_what_the_service_signed(
        self, service: ReceiptService, chain: ChainServiceFake, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A chain service keeps what it signed, so a failure after the Storno cannot undo
        the remedy: Nullbeleg and Sammelbeleg stay, the Storno is stored unsigned from its
        intent (and adopted), and the retry reissues the sale once, without a second Storno."""
        service.issue(sale(request_id="a"))
        _lose_one(service, chain, sale(request_id="b"))

        def crash(*_: object) -> None:
            raise RuntimeError("power cut after the Storno")

        with monkeypatch.context() as patch:
            patch.setattr(recovery, "reissue_draft", crash)
            with pytest.raises(RuntimeError):
                service.recover(REGISTER)
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["null", "sammelbeleg", "standard"]
        assert service.recover(REGISTER) == []
        rows = db_rows(service.db, "SELECT kind, signature_state FROM receipts ORDER BY number")
        assert [tuple(r) for r in rows] == [
            ("start", "signed"),
            ("standard", "signed"),
            ("standard", "unsigned"),
            ("null", "signed"),
            ("sammelbeleg", "signed"),
            ("storno", "unsigned"),  # the service holds it signed: adopted below
            ("null", "signed"),
            ("sammelbeleg", "signed"),
            ("standard", "signed"),
        ]
        assert service.unsigned(REGISTER) == []
        assert _register_turnover(service.db) == 2 * SALE_CENTS
        assert _findings(service.db) == []


class TestASaleThePosVoidedIsNotReissued:
    """An unsigned sale the POS voided meanwhile: the customer's sale was cancelled, so the
    remedy issues neither a second Storno of it nor a replacement; it resolves it as
    superseded, with no replacement, by the POS Storno."""

    def test_voided_by_a_fallback_storno(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Only the Sammelbeleg (no Nullbeleg: nothing is reissued); the sale and its Storno
        cancel out, and the DEP passes the verifier."""
        lost = _lose_one(service, chain, sale(request_id="b"))
        storno = service.issue(_storno_of(lost))
        assert storno.signature_state == "fallback"  # the outage is open
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [(r.kind, r.signature_state) for r in issued] == [("sammelbeleg", "signed")]
        assert _voiding(service.db, lost) == [storno.number]
        assert journal_events(service.db, "receipt.superseded") == [
            {"number": lost, "jws": None, "replacement": None, "voided_by": storno.number}
        ]
        assert _register_turnover(service.db) == 0
        assert _counter(service.db, service.issue(sale(request_id="c"))) == SALE_CENTS
        assert service.unsigned(REGISTER) == []
        [status] = ServiceBackend(service).status().registers  # GET /v1/status
        assert status.unsigned_count == 0
        assert _findings(service.db) == []

    def test_voided_by_an_unsigned_storno(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The unsigned Storno is remedied on its own (reversed, reissued: its replacement
        voids the sale again); the sale itself gets no Storno and no replacement."""
        lost = _lose_one(service, chain, sale(request_id="b"))
        # a Sammelbeleg closes the outage without the remedy (as a zero receipt did before
        # it issued the remedy first; here a scenario replay's), so the POS Storno goes to
        # the service, which loses it too
        service.issue_special(REGISTER, "sammelbeleg")
        storno = _lose_one(service, chain, _storno_of(lost))
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["null", "sammelbeleg", "storno", "storno"]
        reversal, replacement = issued[2:]
        assert _voiding(service.db, storno) == [reversal.number]
        assert _voiding(service.db, lost) == [storno, replacement.number]
        assert journal_events(service.db, "receipt.superseded") == [
            {"number": lost, "jws": None, "replacement": None, "voided_by": storno},
            {"number": storno, "jws": None, "replacement": replacement.number,
             "voided_by": reversal.number},
        ]  # fmt: skip
        assert _register_turnover(service.db) == 0
        assert _counter(service.db, service.issue(sale(request_id="c"))) == SALE_CENTS
        assert service.unsigned(REGISTER) == []
        assert _findings(service.db) == []

    def test_a_sale_not_voided_is_still_reissued_beside_it(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Two unsigned sales, the first voided by the POS: the second gets the Nullbeleg,
        its Storno and its replacement as before; the first only its resolution."""
        voided = _lose_one(service, chain, sale(request_id="a"))
        service.issue_special(REGISTER, "sammelbeleg")  # closes the outage, no remedy
        kept = _lose_one(service, chain, sale(request_id="b"))
        storno = service.issue(_storno_of(voided))
        issued = service.recover(REGISTER)
        assert issued is not None
        assert [r.kind for r in issued] == ["null", "sammelbeleg", "storno", "standard"]
        reversal, replacement = issued[2:]
        assert _voiding(service.db, voided) == [storno.number]
        assert _voiding(service.db, kept) == [reversal.number]
        assert "Ersatz für unsignierten Beleg " + str(kept) in replacement.lines
        assert journal_events(service.db, "receipt.superseded") == [
            {"number": voided, "jws": None, "replacement": None, "voided_by": storno.number},
            {"number": kept, "jws": None, "replacement": replacement.number,
             "voided_by": reversal.number},
        ]  # fmt: skip
        assert _register_turnover(service.db) == SALE_CENTS
        assert _findings(service.db) == []

    def test_the_pos_asking_again_gets_the_receipt_it_was_given(
        self, service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """There is no replacement: the repeated request_id returns the unsigned original."""
        lost = _lose_one(service, chain, sale(request_id="b"))
        service.issue(_storno_of(lost))
        assert service.recover(REGISTER) is not None
        again = service.issue(sale(request_id="b"))
        assert (again.number, again.kind, again.signature_state) == (lost, "standard", "unsigned")

    def test_a_failure_in_the_remedy_resolves_the_sale_once(
        self, service: ReceiptService, chain: ChainServiceFake, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failure after the Sammelbeleg was signed, before its commit: the retry closes
        the outage; the voided sale is resolved exactly once and never reissued."""
        lost = _lose_one(service, chain, sale(request_id="b"))
        storno = service.issue(_storno_of(lost))

        def crash(*_: object) -> None:
            raise RuntimeError("power cut after the Sammelbeleg")

        with monkeypatch.context() as patch:
            patch.setattr(storing, "_after_store", crash)
            with pytest.raises(RuntimeError):
                service.recover(REGISTER)
        assert service.recover(REGISTER) is not None
        assert service.recover(REGISTER) == []
        resolved = journal_events(service.db, "receipt.superseded")
        assert [e for e in resolved if e["number"] == lost] == [
            {"number": lost, "jws": None, "replacement": None, "voided_by": storno.number}
        ]
        assert _voiding(service.db, lost) == [storno.number]
        assert _register_turnover(service.db) == 0
        assert service.unsigned(REGISTER) == []
        assert _findings(service.db) == []

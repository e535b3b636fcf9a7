"""The receipt service (agent/receipts.py): numbering, chaining, counter, kinds, fallback."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agent.at_rksv import (
    FALLBACK_TEXT,
    STORNO_MARKER,
    TRAINING_MARKER,
    Payload,
    decrypt_counter,
    signing_input,
    split_jws,
)
from agent.at_rksv.encoding import b64url
from agent.clock import FrozenClock
from agent.contract import ReceiptResult
from agent.errors import FiscalError, InvalidSale, NotFound, StorageError, TillAgentError
from agent.receipts import Issued, ReceiptService, RegisterSetup
from agent.signing import UnitConfig, open_unit, verify_rs
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from agent.signing.software import load_certificate
from factories import disk_full, sale, to_closing_day
from storage import TillDB

Query = Callable[..., list[sqlite3.Row]]
REGISTER = "KASSE-1"
SALE_CENTS = 1670  # factories.sale(): 12.50 normal + 2 x 2.10 reduced1


def _storno(voids: int, request_id: str = "sto-1", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "register": REGISTER,
        "kind": "storno",
        "voids": voids,
    } | extra


def _payload(result: ReceiptResult) -> Payload:
    return split_jws(result.jws)[0]


def _signature(result: ReceiptResult) -> bytes:
    return split_jws(result.jws)[1]


def _chain_over(jws: str) -> str:
    return base64.b64encode(hashlib.sha256(jws.encode()).digest()[:8]).decode()


def _register(query: Query, register_id: str = REGISTER) -> sqlite3.Row:
    (row,) = query("SELECT * FROM registers WHERE id = ?", register_id)
    return row


def _counter(query: Query, result: ReceiptResult) -> int:
    key = base64.b64decode(_register(query, result.register_id)["aes_key"])
    return decrypt_counter(key, result.register_id, result.receipt_id, _payload(result).counter)


def _journal_size(query: Query) -> int:
    return int(query("SELECT count(*) AS n FROM journal")[0]["n"])


@pytest.fixture(name="verify")
def _verify(unit_config: UnitConfig) -> Callable[[ReceiptResult], bool]:
    """Checks a receipt's ES256 signature against the unit's certificate, independently."""
    assert unit_config.certificate_file is not None
    public_key = load_certificate(unit_config.certificate_file).public_key()

    def verify(result: ReceiptResult) -> bool:
        data = signing_input(_payload(result))
        return verify_rs(public_key, data, _signature(result))  # type: ignore[arg-type]

    return verify


@pytest.fixture(name="flaky")
def _flaky(
    bare_service: ReceiptService, registry: UnitRegistry, unit_config: UnitConfig
) -> FlakyUnit:
    """The dev unit wrapped so a test can take it down; it replaces the plain unit."""
    unit = FlakyUnit(open_unit(unit_config))
    registry.put(unit)
    return unit


class TestStartbeleg:
    def test_the_startbeleg_is_number_one_signed_with_counter_zero(
        self, service: ReceiptService, query: Query, verify: Callable[[ReceiptResult], bool]
    ) -> None:
        """Initialization issues receipt 1: kind start, validly signed, counter 0, no amounts."""
        start = service.get(REGISTER, 1)
        assert (start.number, start.receipt_id, start.kind) == (1, "1", "start")
        assert start.signature_state == "signed"
        assert verify(start)
        assert _counter(query, start) == 0
        assert _payload(start).amounts == ("0,00",) * 5
        assert "*** STARTBELEG ***" in start.lines

    def test_the_startbeleg_chains_over_the_kassen_id(self, service: ReceiptService) -> None:
        """The first chain value is over the Kassen-ID, as no previous receipt exists."""
        start = service.get(REGISTER, 1)
        assert _payload(start).chain == _chain_over(REGISTER)

    def test_the_payload_names_register_suite_and_certificate(
        self, service: ReceiptService, unit_config: UnitConfig
    ) -> None:
        """Suite R1-AT1, the Kassen-ID and the certificate serial in hex are signed."""
        assert unit_config.certificate_file is not None
        serial = load_certificate(unit_config.certificate_file).serial_number
        payload = _payload(service.get(REGISTER, 1))
        assert (payload.suite, payload.register_id) == ("R1-AT1", REGISTER)
        assert payload.cert_serial == format(serial, "x")

    def test_init_refuses_while_the_unit_is_down(
        self, bare_service: ReceiptService, flaky: FlakyUnit, query: Query
    ) -> None:
        """No valid signature, no register: the Startbeleg must be signed."""
        flaky.mode = "down"
        journal = _journal_size(query)
        with pytest.raises(FiscalError, match="start receipt must be validly signed"):
            bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        assert query("SELECT * FROM registers") == []
        assert query("SELECT * FROM register_units") == []
        assert query("SELECT * FROM receipts") == []
        assert _journal_size(query) == journal

    def test_init_succeeds_once_the_unit_is_back(
        self, bare_service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A refused init leaves nothing behind, so the next attempt starts at number 1."""
        flaky.mode = "down"
        with pytest.raises(FiscalError):
            bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        flaky.mode = "up"
        start = bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        assert (start.number, start.signature_state) == (1, "signed")

    def test_init_refuses_a_garbage_signature(
        self, bare_service: ReceiptService, flaky: FlakyUnit, query: Query
    ) -> None:
        """A signature that does not verify is no signature: init fails, nothing is stored."""
        flaky.mode = "garbage"
        with pytest.raises(FiscalError):
            bare_service.init_register(RegisterSetup(REGISTER, ["dev"]))
        assert query("SELECT * FROM registers") == []

    def test_a_register_is_initialized_once(self, service: ReceiptService, query: Query) -> None:
        """A second init of the same Kassen-ID is refused and issues nothing."""
        with pytest.raises(InvalidSale) as refused:
            service.init_register(RegisterSetup(REGISTER, ["dev"]))
        assert (refused.value.field, refused.value.rule) == ("register", "register-exists")
        assert _register(query)["last_number"] == 1

    @pytest.mark.parametrize(
        ("setup", "field"),
        [
            pytest.param(RegisterSetup("K_1", ["dev"]), "register", id="underscore"),
            pytest.param(RegisterSetup("", ["dev"]), "register", id="empty"),
            pytest.param(RegisterSetup(".", ["dev"]), "register", id="dot"),
            pytest.param(RegisterSetup("..", ["dev"]), "register", id="dot-dot"),
            pytest.param(RegisterSetup("K" * 65, ["dev"]), "register", id="too-long"),
            pytest.param(RegisterSetup("K-2", []), "units", id="no-units"),
            pytest.param(RegisterSetup("K-2", ["nope"]), "units", id="unknown-unit"),
            pytest.param(RegisterSetup("K-2", ["dev"], aes_key=b"short"), "aes_key", id="aes"),
            pytest.param(
                RegisterSetup("K-2", ["dev"], receipt_id_format="A_{number}"),
                "receipt_id_format",
                id="format-underscore",
            ),
            pytest.param(
                RegisterSetup("KASSE 1", ["dev"]),
                "register",
                id="space",
            ),
            pytest.param(
                RegisterSetup("K-2", ["dev"], receipt_id_format="X"),
                "receipt_id_format",
                id="format-without-number",
            ),
            pytest.param(
                RegisterSetup("K-2", ["dev"], receipt_id_format="{nr}"),
                "receipt_id_format",
                id="format-unknown-key",
            ),
            pytest.param(
                RegisterSetup("K-2", ["dev"], counter_bytes=4),
                "counter_bytes",
                id="counter-bytes",
            ),
            pytest.param(  # the Prüftool fails on 16 (rksv.md 3.3); 5 to 8 are offered
                RegisterSetup("K-2", ["dev"], counter_bytes=16),
                "counter_bytes",
                id="counter-bytes-16",
            ),
            pytest.param(
                RegisterSetup("K-2", ["dev"], timezone="Mars/Olympus"),
                "timezone",
                id="timezone",
            ),
            pytest.param(
                RegisterSetup("K-2", ["dev"], timezone="UTC"),
                "timezone",
                id="timezone-not-austrian",
            ),
        ],
    )
    def test_bad_setups_are_refused_by_field(
        self, bare_service: ReceiptService, query: Query, setup: RegisterSetup, field: str
    ) -> None:
        """A bad register setup is an InvalidSale naming the field, and creates nothing."""
        with pytest.raises(InvalidSale) as refused:
            bare_service.init_register(setup)
        assert refused.value.field == field
        assert query("SELECT * FROM registers") == []


class TestStandardSale:
    def test_numbers_go_up_by_one(self, service: ReceiptService) -> None:
        """Sales after the Startbeleg are numbered 2, 3, 4 with matching receipt ids."""
        results = [service.issue(sale(request_id=f"r{i}")) for i in range(3)]
        assert [(r.number, r.receipt_id) for r in results] == [(2, "2"), (3, "3"), (4, "4")]
        assert {r.signature_state for r in results} == {"signed"}

    def test_each_receipt_chains_to_the_previous_jws(self, service: ReceiptService) -> None:
        """The chain field of receipt n+1 is base64(sha256(JWS of n)[:8])."""
        receipts = [service.get(REGISTER, 1)]
        receipts += [service.issue(sale(request_id=f"r{i}")) for i in range(4)]
        for previous, current in itertools.pairwise(receipts):
            assert _payload(current).chain == _chain_over(previous.jws)

    def test_signatures_verify_against_the_certificate(
        self, service: ReceiptService, verify: Callable[[ReceiptResult], bool]
    ) -> None:
        """A signed receipt's JWS verifies with the unit's certificate."""
        assert verify(service.issue(sale()))

    def test_amounts_are_signed_per_vat_class(self, service: ReceiptService) -> None:
        """12.50 normal and 2 x 2.10 reduced1 appear in their payload fields."""
        payload = _payload(service.issue(sale()))
        assert payload.amounts == ("12,50", "4,20", "0,00", "0,00", "0,00")

    def test_the_counter_is_the_running_total(self, service: ReceiptService, query: Query) -> None:
        """Decrypting each receipt's counter with the register's AES key gives the total so far."""
        totals = [_counter(query, service.issue(sale(request_id=f"r{i}"))) for i in range(3)]
        assert totals == [SALE_CENTS, 2 * SALE_CENTS, 3 * SALE_CENTS]
        assert _register(query)["turnover_cents"] == 3 * SALE_CENTS

    def test_issued_at_is_vienna_local_time(self, service: ReceiptService) -> None:
        """The receipt date is Austrian local time without offset (10:00 UTC is 11:00 CET)."""
        assert service.issue(sale()).issued_at == "2026-03-02T11:00:00"

    def test_printable_lines_show_items_total_and_payments(self, service: ReceiptService) -> None:
        """The text has the register, the number, each item, the sum and the payment."""
        lines = service.issue(sale()).lines
        assert lines[:2] == ["Kasse KASSE-1", "Beleg 2"]
        assert any(ln.startswith("Schnitzel") and ln.endswith("12,50 A") for ln in lines)
        assert "  2 x 2,10" in lines
        assert any(ln.startswith("SUMME EUR") and ln.endswith("16,70") for ln in lines)
        assert any(ln.startswith("  cash") and ln.endswith("16,70") for ln in lines)
        assert FALLBACK_TEXT not in lines

    def test_qr_and_ocr_carry_the_payload(self, service: ReceiptService) -> None:
        """Both machine-readable forms start with the signed payload's leading fields."""
        result = service.issue(sale())
        text = _payload(result).text()
        assert result.qr.startswith(text + "_")
        assert result.ocr.startswith("_R1-AT1_KASSE-1_2_")

    def test_get_returns_the_stored_receipt(self, service: ReceiptService) -> None:
        """A stored receipt reads back exactly as it was returned."""
        issued = service.issue(sale())
        assert service.get(REGISTER, 2) == issued

    def test_get_of_a_missing_receipt_is_not_found(self, service: ReceiptService) -> None:
        """Asking for a number that was never issued raises NotFound."""
        with pytest.raises(NotFound, match="no receipt 99"):
            service.get(REGISTER, 99)

    def test_the_receipt_row_records_the_sale(self, service: ReceiptService, query: Query) -> None:
        """The stored row has the request id, amounts, the turnover and the document."""
        service.issue(sale(cashier="Anna"))
        (row,) = query("SELECT * FROM receipts WHERE number = 2")
        assert (row["request_id"], row["kind"], row["signature_state"]) == (
            "req-1",
            "standard",
            "signed",
        )
        assert (row["amount_normal"], row["amount_reduced1"]) == (1250, 420)
        assert row["turnover_cents"] == SALE_CENTS
        assert json.loads(row["document"])["cashier"] == "Anna"

    def test_a_counter_overflow_is_a_fiscal_error(
        self, bare_service: ReceiptService, query: Query
    ) -> None:
        """A turnover beyond a 5-byte counter stops the register with an agent error."""
        bare_service.init_register(RegisterSetup("K-5", ["dev"], counter_bytes=5))
        big = {
            "register": "K-5",
            "lines": [
                {"text": "Yacht", "qty": "1", "unit_price": "1000000000.00", "vat": "normal"}
            ],
            "payments": [{"method": "card", "amount": "1000000000.00"}],
        }
        try:
            for i in range(6):  # 2**39 cents is about 5.5e9 euros
                bare_service.issue(sale(request_id=f"y{i}", **big))
        except TillAgentError:
            pass
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}") from exc
        else:
            raise AssertionError("six sales of a billion euros fit a 5-byte counter")
        assert _register(query, "K-5")["turnover_cents"] < 2**39


class TestStorno:
    def test_a_storno_is_a_new_receipt_that_negates_the_voided_one(
        self, service: ReceiptService, query: Query
    ) -> None:
        """Voiding receipt 2 issues number 3 with STO marker, negated amounts and voids_number."""
        service.issue(sale())
        storno = service.issue(_storno(2))
        payload = _payload(storno)
        assert (storno.number, storno.kind, storno.signature_state) == (3, "storno", "signed")
        assert payload.counter == STORNO_MARKER
        assert payload.amounts == ("-12,50", "-4,20", "0,00", "0,00", "0,00")
        (row,) = query("SELECT voids_number FROM receipts WHERE number = 3")
        assert row["voids_number"] == 2

    def test_a_storno_takes_its_amount_off_the_counter(
        self, service: ReceiptService, query: Query
    ) -> None:
        """After a storno the turnover drops, and the next receipt's counter shows it."""
        service.issue(sale(request_id="a"))
        service.issue(sale(request_id="b"))
        service.issue(_storno(2))
        assert _register(query)["turnover_cents"] == SALE_CENTS
        assert _counter(query, service.issue(sale(request_id="c"))) == 2 * SALE_CENTS

    def test_a_receipt_is_voided_once(self, service: ReceiptService, query: Query) -> None:
        """A second storno of the same receipt is refused and consumes nothing."""
        service.issue(sale())
        service.issue(_storno(2))
        with pytest.raises(InvalidSale) as refused:
            service.issue(_storno(2, request_id="sto-2"))
        assert (refused.value.field, refused.value.rule) == ("voids", "already-voided")
        assert _register(query)["last_number"] == 3

    def test_the_storno_text_is_labelled(self, service: ReceiptService) -> None:
        """The printout says STORNOBUCHUNG and names the voided receipt."""
        service.issue(sale())
        lines = service.issue(_storno(2)).lines
        assert "*** STORNOBUCHUNG ***" in lines
        assert "Storno zu Beleg 2" in lines
        assert any(ln.startswith("SUMME EUR") and ln.endswith("-16,70") for ln in lines)

    def test_a_storno_may_state_its_refund_payment(self, service: ReceiptService) -> None:
        """Payments that add up to minus the voided total are accepted and printed."""
        service.issue(sale())
        refund = service.issue(_storno(2, payments=[{"method": "cash", "amount": "-16.70"}]))
        assert any(ln.startswith("  cash") and ln.endswith("-16,70") for ln in refund.lines)

    def test_a_fallback_receipt_can_be_voided(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """A sale made during an outage is a real sale and can be voided, then or later."""
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        service.issue(sale(request_id="b"))
        assert service.issue(_storno(2)).signature_state == "fallback"
        flaky.mode = "up"
        service.issue_special(REGISTER, "sammelbeleg")
        assert service.issue(_storno(3, request_id="sto-2")).signature_state == "signed"


class TestTraining:
    def test_training_carries_the_marker_and_leaves_the_counter(
        self, service: ReceiptService, query: Query
    ) -> None:
        """A training receipt has the TRA marker and does not change the turnover."""
        service.issue(sale(request_id="a"))
        training = service.issue(sale(request_id="t", kind="training"))
        assert (training.number, training.kind) == (3, "training")
        assert _payload(training).counter == TRAINING_MARKER
        assert _register(query)["turnover_cents"] == SALE_CENTS
        assert _counter(query, service.issue(sale(request_id="b"))) == 2 * SALE_CENTS

    def test_training_is_chained_and_labelled(self, service: ReceiptService) -> None:
        """Training receipts are in the chain and print TRAININGSBUCHUNG."""
        first = service.issue(sale(request_id="a"))
        training = service.issue(sale(request_id="t", kind="training"))
        assert _payload(training).chain == _chain_over(first.jws)
        assert "*** TRAININGSBUCHUNG ***" in training.lines


class TestNullAndSpecial:
    def test_a_null_sale_shows_the_counter_without_amounts(
        self, service: ReceiptService, query: Query
    ) -> None:
        """A Nullbeleg from the POS has zero amounts and the unchanged turnover in its counter."""
        service.issue(sale())
        null = service.issue({"request_id": "n", "register": REGISTER, "kind": "null"})
        assert (null.number, null.kind) == (3, "null")
        assert _payload(null).amounts == ("0,00",) * 5
        assert _counter(query, null) == SALE_CENTS
        assert "*** NULLBELEG ***" in null.lines

    @pytest.mark.parametrize(
        ("kind", "title"),
        [
            ("null", "NULLBELEG"),
            ("monthly", "MONATSBELEG"),
            ("yearly", "JAHRESBELEG"),
            ("closing", "SCHLUSSBELEG"),
            ("sammelbeleg", "SAMMELBELEG"),
        ],
    )
    def test_special_receipts_are_signed_zero_receipts(
        self,
        service: ReceiptService,
        query: Query,
        verify: Callable[[ReceiptResult], bool],
        kind: str,
        title: str,
    ) -> None:
        """Agent-made receipts take the next number, carry no amounts and show the turnover."""
        service.issue(sale())
        caught_up = to_closing_day(service, kind)
        special = service.issue_special(REGISTER, kind)
        assert (special.number, special.kind, special.signature_state) == (
            3 + caught_up,
            kind,
            "signed",
        )
        assert verify(special)
        assert _payload(special).amounts == ("0,00",) * 5
        assert _counter(query, special) == SALE_CENTS
        assert f"*** {title} ***" in special.lines

    @pytest.mark.parametrize("kind", ["start", "bogus"])
    def test_issue_special_refuses_other_kinds(
        self, service: ReceiptService, query: Query, kind: str
    ) -> None:
        """A second Startbeleg or an unknown kind cannot be issued."""
        with pytest.raises(InvalidSale) as refused:
            service.issue_special(REGISTER, kind)
        assert (refused.value.field, refused.value.rule) == ("kind", "allowed-values")
        assert _register(query)["last_number"] == 1


class TestClosing:
    @pytest.fixture(name="closed")
    def _closed(self, service: ReceiptService) -> ReceiptService:
        service.issue(sale(request_id="before"))
        service.issue_special(REGISTER, "closing")
        return service

    def test_the_schlussbeleg_closes_the_register(
        self, closed: ReceiptService, query: Query
    ) -> None:
        """After the Schlussbeleg the register's state is closed."""
        assert _register(query)["state"] == "closed"
        assert _register(query)["last_number"] == 3

    @pytest.mark.parametrize(
        "attempt",
        [
            pytest.param(lambda s: s.issue(sale(request_id="after")), id="sale"),
            pytest.param(lambda s: s.issue(_storno(2)), id="storno"),
            pytest.param(lambda s: s.issue(sale(request_id="t", kind="training")), id="training"),
            pytest.param(
                lambda s: s.issue({"request_id": "n", "register": REGISTER, "kind": "null"}),
                id="null",
            ),
            pytest.param(lambda s: s.issue_special(REGISTER, "monthly"), id="monthly"),
            pytest.param(lambda s: s.issue_special(REGISTER, "closing"), id="closing"),
            pytest.param(lambda s: s.issue_special(REGISTER, "sammelbeleg"), id="sammelbeleg"),
        ],
    )
    def test_every_issue_is_refused_after_closing(
        self,
        closed: ReceiptService,
        query: Query,
        attempt: Callable[[ReceiptService], object],
    ) -> None:
        """Nothing more is issued on a closed register: field register, rule register-closed."""
        journal = _journal_size(query)
        with pytest.raises(InvalidSale) as refused:
            attempt(closed)
        assert (refused.value.field, refused.value.rule) == ("register", "register-closed")
        assert "Schlussbeleg" in refused.value.message
        assert _register(query)["last_number"] == 3
        assert _journal_size(query) == journal

    def test_a_retry_of_an_earlier_sale_still_gets_its_receipt(
        self, closed: ReceiptService
    ) -> None:
        """Idempotency outlives the register: a repeated request returns the stored receipt."""
        assert closed.issue(sale(request_id="before")).number == 2


def _line(**change: str) -> dict[str, str]:
    return {"text": "Schnitzel", "qty": "1", "unit_price": "12.50", "vat": "normal"} | change


class TestIdempotency:
    def test_a_repeated_request_returns_the_stored_receipt(
        self, service: ReceiptService, query: Query
    ) -> None:
        """The same request_id and sale give the same number and JWS, and consume nothing."""
        first = service.issue(sale())
        journal = _journal_size(query)
        again = service.issue(sale())
        assert again == first
        assert _register(query)["last_number"] == 2
        assert _journal_size(query) == journal

    def test_the_same_sale_in_other_json_spelling_is_a_repeat(
        self, service: ReceiptService
    ) -> None:
        """Key order and whitespace do not make a retry a different sale."""
        first = service.issue(json.dumps(sale()).encode())
        reordered = dict(reversed(list(sale().items())))
        assert service.issue(json.dumps(reordered, indent=4)) == first

    def test_a_request_id_with_a_different_sale_is_refused(
        self, service: ReceiptService, query: Query
    ) -> None:
        """Reusing a request_id for other content is an error naming request_id; nothing is used."""
        service.issue(sale())
        journal = _journal_size(query)
        with pytest.raises(InvalidSale) as refused:
            service.issue(sale(cashier="Someone else"))
        assert (refused.value.field, refused.value.rule) == ("request_id", "request-id-reused")
        assert _register(query)["last_number"] == 2
        assert _journal_size(query) == journal

    @pytest.mark.parametrize(
        "change",
        [
            {"cashier": "Eva"},
            {"kind": "training"},
            {"lines": [_line(vat="zero")]},
            {"lines": [_line(text="Schnitzel ")]},
            {"lines": [_line(qty="1.0")]},
            {"payments": [{"method": "card", "amount": "16.70"}]},
            # money counts by amount ("16.7" is "16.70": test_idempotency_money.py)
            {
                "lines": [_line(unit_price="12.51")],
                "payments": [{"method": "cash", "amount": "12.51"}],
            },
        ],
    )
    def test_every_field_of_the_sale_counts(
        self, service: ReceiptService, change: dict[str, Any]
    ) -> None:
        """Any field sent differently (a line, its spelling, a payment, the cashier, the
        kind) makes the retry another sale, refused under the same request_id."""
        service.issue(sale())
        changed = sale() | change
        if "lines" in change and "payments" not in change:
            changed["payments"] = [{"method": "cash", "amount": "12.50"}]
        with pytest.raises(InvalidSale) as refused:
            service.issue(changed)
        assert refused.value.rule == "request-id-reused"

    def test_receipts_stored_with_the_earlier_hash_stay_idempotent(
        self, service: ReceiptService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A receipt issued before the "s2:" fingerprint carries the hex SHA-256 of the
        sale's canonical JSON: its retry still returns it, and another sale is refused."""
        from agent import receipts
        from storage.journal import canonical_json

        def earlier(parsed: Any) -> str:
            return hashlib.sha256(canonical_json(parsed.model_dump()).encode()).hexdigest()

        with monkeypatch.context() as patch:
            patch.setattr(receipts, "sale_fingerprint", earlier)
            first = service.issue(sale())
        assert service.issue(json.dumps(sale(), indent=2)) == first
        with pytest.raises(InvalidSale) as refused:
            service.issue(sale(cashier="Eva"))
        assert refused.value.rule == "request-id-reused"

    def test_exactly_one_of_concurrent_identical_requests_creates_the_receipt(
        self, service: ReceiptService, query: Query
    ) -> None:
        """Eight threads send the same sale at once (a POS retrying over the spool and the
        API): one call creates the receipt, seven get it back as a repeat, one number is
        used. The answer comes from the transaction that inserts, not from a lookup
        before it."""
        barrier = threading.Barrier(8)

        def send(_: int) -> Issued:
            barrier.wait()
            return service.issue_once(sale())

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
        assert sorted(a.created for a in answers) == [False] * 7 + [True]
        assert {a.result.number for a in answers} == {2}
        assert _register(query)["last_number"] == 2

    def test_request_ids_are_per_register(self, service: ReceiptService) -> None:
        """Another register may use the same request_id for its own sale."""
        service.init_register(RegisterSetup("KASSE-2", ["dev"]))
        first = service.issue(sale())
        other = service.issue(sale(register="KASSE-2"))
        assert (first.register_id, first.number) == (REGISTER, 2)
        assert (other.register_id, other.number) == ("KASSE-2", 2)


class TestFullDisk:
    def test_a_full_disk_refuses_the_sale_consumes_nothing_and_recovers(
        self, service: ReceiptService, query: Query
    ) -> None:
        """A write that finds the disk full is a storage error that says so (not SQLite's
        own error, and not a failed ROLLBACK hiding it); no number, counter or journal
        event is used, and with room again the same sale gets the next number, chained to
        the last receipt."""
        disk_full(service)
        issued: list[ReceiptResult] = []
        with pytest.raises(StorageError, match="disk is full"):  # noqa: PT012 - until full
            for i in range(500):
                issued.append(service.issue(sale(request_id=f"f{i}")))
        refused = sale(request_id=f"f{len(issued)}")
        before = (_register(query)["last_number"], _register(query)["turnover_cents"])
        journal = _journal_size(query)
        assert before == (1 + len(issued), SALE_CENTS * len(issued))
        with pytest.raises(StorageError, match="nothing of it was stored"):
            service.issue(refused)
        assert (_register(query)["last_number"], _register(query)["turnover_cents"]) == before
        assert _journal_size(query) == journal
        disk_full(service, full=False)
        again = service.issue(refused)
        assert again.number == before[0] + 1
        last_jws = issued[-1].jws if issued else query("SELECT jws FROM receipts")[0]["jws"]
        assert _payload(again).chain == _chain_over(last_jws)


class TestFallback:
    def test_a_sale_during_an_outage_is_fallback_signed(
        self, service: ReceiptService, flaky: FlakyUnit, query: Query
    ) -> None:
        """Unit down: the sale still gets its number, the marker signature and is counted."""
        flaky.mode = "down"
        result = service.issue(sale())
        assert (result.number, result.signature_state) == (2, "fallback")
        assert result.jws.rsplit(".", 1)[1] == b64url(FALLBACK_TEXT.encode())
        assert _signature(result) == FALLBACK_TEXT.encode()
        assert _counter(query, result) == SALE_CENTS

    def test_the_fallback_text_is_printed(self, service: ReceiptService, flaky: FlakyUnit) -> None:
        """A fallback receipt says 'Sicherheitseinrichtung ausgefallen' on paper."""
        flaky.mode = "down"
        assert "Sicherheitseinrichtung ausgefallen" in service.issue(sale()).lines

    def test_the_chain_runs_through_an_outage(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        verify: Callable[[ReceiptResult], bool],
    ) -> None:
        """Fallback receipts chain like any other, and the signed Sammelbeleg chains over them."""
        flaky.mode = "down"
        during = service.issue(sale(request_id="a"))
        flaky.mode = "up"
        sammel = service.issue_special(REGISTER, "sammelbeleg")
        after = service.issue(sale(request_id="b"))
        assert _payload(during).chain == _chain_over(service.get(REGISTER, 1).jws)
        assert _payload(sammel).chain == _chain_over(during.jws)
        assert _payload(after).chain == _chain_over(sammel.jws)
        assert (sammel.signature_state, after.signature_state) == ("signed", "signed")
        assert verify(sammel)
        assert verify(after)

    def test_receipts_fall_back_until_the_sammelbeleg(
        self, service: ReceiptService, flaky: FlakyUnit
    ) -> None:
        """Once an outage is open, sales fall back at once, even after the unit is back."""
        flaky.mode = "down"
        service.issue(sale(request_id="a"))
        flaky.mode = "up"
        calls = flaky.calls
        assert service.issue(sale(request_id="b")).signature_state == "fallback"
        assert flaky.calls == calls  # the breaker is open: the unit is not asked
        service.issue_special(REGISTER, "sammelbeleg")
        assert service.issue(sale(request_id="c")).signature_state == "signed"

    @pytest.mark.parametrize("kind", ["null", "monthly"])
    def test_other_special_receipts_may_fall_back(
        self, service: ReceiptService, flaky: FlakyUnit, kind: str
    ) -> None:
        """Only start, yearly and Sammelbeleg must be signed; null and monthly take the
        fallback (a Schlussbeleg waits instead: tests/agent/test_closing_outage.py)."""
        to_closing_day(service, kind)
        flaky.mode = "down"
        assert service.issue_special(REGISTER, kind).signature_state == "fallback"

    @pytest.mark.parametrize("kind", ["yearly", "sammelbeleg"])
    def test_must_sign_receipts_wait_for_the_unit(
        self, service: ReceiptService, flaky: FlakyUnit, query: Query, kind: str
    ) -> None:
        """Jahresbeleg and Sammelbeleg raise FiscalError while the unit is down; no number
        used, only the outage the failure opens is journaled (DESIGN.md invariant 4). Its
        Sammelbeleg comes first, then the Jahresbeleg."""
        last = 1 + to_closing_day(service, kind)
        flaky.mode = "down"
        journal = _journal_size(query)
        with pytest.raises(FiscalError, match=f"a {kind} receipt must be validly signed"):
            service.issue_special(REGISTER, kind)
        assert _register(query)["last_number"] == last
        added = query("SELECT kind FROM journal ORDER BY seq LIMIT -1 OFFSET ?", journal)
        assert [r["kind"] for r in added] == ["outage.opened", "outage.escalation"]
        flaky.mode = "up"
        if kind == "yearly":
            recovered = service.recover(REGISTER)
            assert [r.kind for r in recovered or []] == ["sammelbeleg"]
            last += 1
        assert service.issue_special(REGISTER, kind).number == last + 1
        assert not service.outages.is_open(REGISTER)

    def test_a_garbage_signature_never_reaches_the_journal(
        self,
        service: ReceiptService,
        flaky: FlakyUnit,
        query: Query,
        verify: Callable[[ReceiptResult], bool],
    ) -> None:
        """An answer that does not verify is treated as no answer: the receipt falls back."""
        flaky.mode = "garbage"
        result = service.issue(sale())
        assert result.signature_state == "fallback"
        assert _signature(result) == FALLBACK_TEXT.encode()
        assert flaky.calls == 1
        for row in query("SELECT data FROM journal WHERE kind = 'receipt.issued'"):
            event = json.loads(row["data"])
            stored = service.get(REGISTER, event["number"])
            assert stored.jws == event["jws"]
            assert verify(stored) == (event["signature_state"] == "signed")

    def test_a_slow_unit_counts_as_down(
        self,
        db: TillDB,
        registry: UnitRegistry,
        clock: FrozenClock,
        service: ReceiptService,
        flaky: FlakyUnit,
    ) -> None:
        """An answer after the deadline is discarded and the sale falls back."""
        hasty = ReceiptService(db, registry, clock=clock, sign_timeout=0.05)
        flaky.mode, flaky.delay = "slow", 1.0
        assert hasty.issue(sale()).signature_state == "fallback"


class TestDates:
    def test_a_clock_set_back_does_not_move_dates_back(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """With the clock an hour behind, receipts keep the last date until time catches up."""
        first = service.issue(sale(request_id="a"))
        clock.jump(-3600)
        behind = service.issue(sale(request_id="b"))
        assert behind.issued_at == first.issued_at == "2026-03-02T11:00:00"
        clock.jump(3600 + 60)
        assert service.issue(sale(request_id="c")).issued_at == "2026-03-02T11:01:00"

    def test_dates_follow_the_clock_forward(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """A later clock gives a later date, across days."""
        clock.set(dt.datetime(2026, 3, 3, 22, 30, tzinfo=dt.UTC))
        assert service.issue(sale()).issued_at == "2026-03-03T23:30:00"

    def test_summer_time_is_local_time(self, service: ReceiptService, clock: FrozenClock) -> None:
        """In July, Vienna is UTC+2."""
        clock.set(dt.datetime(2026, 7, 1, 10, 0, tzinfo=dt.UTC))
        assert service.issue(sale()).issued_at == "2026-07-01T12:00:00"

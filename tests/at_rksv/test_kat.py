"""Bit-exact known-answer tests of the RKSV primitives (shared/vectors/rksv/kat and e2e_*).

The turnover counter, chaining value, amount format, markers, QR/OCR codes and the
JWS are compared with the known answers; the e2e signatures are RFC 6979 deterministic,
so re-signing each payload with the test key must give the recorded JWS exactly.
"""

from __future__ import annotations

import base64
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from agent.at_rksv.counter import (
    STORNO_MARKER,
    TRAINING_MARKER,
    aes_key_check_value,
    counter_iv,
    decrypt_counter,
    encrypt_counter,
)
from agent.at_rksv.encoding import (
    amount_to_cents,
    b32,
    b32_each,
    b64,
    b64_decode,
    b64url,
    cents_to_amount,
)
from agent.at_rksv.payload import (
    FALLBACK_SIGNATURE,
    FALLBACK_TEXT,
    JWS_HEADER,
    JWS_HEADER_B64,
    Payload,
    chain_value,
    jws_compact,
    ocr_code,
    qr_code,
    signing_input,
    split_jws,
)
from agent.signing.base import der_to_rs, verify_rs
from factories import require_vectors

VECTORS = require_vectors(module=True)  # all known answers: else the module is skipped


def _load(relative: str) -> Any:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


def _to_cents(value: float | str) -> int:
    """Euro amount (decimal string or float) to cents, rounding half up."""
    euros = Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return int(euros * 100)


KAT_COUNTER = _load("kat/kat_turnover_counter.json")
KAT_EDGE = _load("kat/kat_turnover_edge.json")
KAT_MISC = _load("kat/kat_misc.json")
E2E = {mode: _load(f"{mode}/expected.json") for mode in ("e2e_open", "e2e_closed")}

SCENARIO_RUNS = [
    pytest.param(scenario, int(length), id=f"{scenario['simulationRunLabel']}-N{length}")
    for scenario in KAT_COUNTER["scenarios"]
    for length in scenario["byLength"]
]
SCENARIOS = [
    pytest.param(scenario, id=scenario["simulationRunLabel"])
    for scenario in KAT_COUNTER["scenarios"]
]
E2E_RECEIPTS = [
    pytest.param(mode, index, id=f"{mode}-{receipt['receiptIdentifier']}")
    for mode, expected in E2E.items()
    for index, receipt in enumerate(expected["receipts"])
]
OFFICIAL_FIELDS = (
    "taxSetNormal",
    "taxSetErmaessigt1",
    "taxSetErmaessigt2",
    "taxSetNull",
    "taxSetBesonders",
)


def _entries(scenario: dict[str, Any], length: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = scenario["byLength"][str(length)]
    return entries


def _counter_field(key: bytes, register_id: str, entry: dict[str, Any], length: int) -> str:
    markers = {"STORNO_BELEG": STORNO_MARKER, "TRAINING_BELEG": TRAINING_MARKER}
    if entry["typeOfReceipt"] in markers:
        return markers[entry["typeOfReceipt"]]
    cents = entry["turnoverCounterCentsAfter"]
    return encrypt_counter(key, register_id, entry["receiptIdentifier"], cents, length)


class TestTurnoverCounterKat:
    def test_all_2600_entries_are_present(self) -> None:
        """The KAT file holds 8 scenarios x N=5..8, 2,600 receipts in all."""
        total = sum(len(_entries(s, n)) for s in KAT_COUNTER["scenarios"] for n in range(5, 9))
        assert total == 2600

    @pytest.mark.parametrize(("scenario", "length"), SCENARIO_RUNS)
    def test_counter_field_is_bit_exact(self, scenario: dict[str, Any], length: int) -> None:
        """Every Stand-Umsatz-Zaehler field encrypts (and decrypts) exactly."""
        key = b64_decode(scenario["base64AesKey"])
        register_id = scenario["cashBoxId"]
        for entry in _entries(scenario, length):
            field = entry["standUmsatzZaehlerField"]
            assert _counter_field(key, register_id, entry, length) == field, entry
            if field not in (STORNO_MARKER, TRAINING_MARKER):
                cents = decrypt_counter(key, register_id, entry["receiptIdentifier"], field)
                assert cents == entry["turnoverCounterCentsAfter"]

    @pytest.mark.parametrize(("scenario", "length"), SCENARIO_RUNS)
    def test_running_total_follows_the_amounts(self, scenario: dict[str, Any], length: int) -> None:
        """Storno adds its amounts, Training does not, every other receipt adds its sum."""
        total = 0
        for entry in _entries(scenario, length):
            if entry["typeOfReceipt"] != "TRAINING_BELEG":
                total += sum(amount_to_cents(a) for a in entry["amounts"])
            assert total == entry["turnoverCounterCentsAfter"], entry["receiptIdentifier"]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_amounts_match_the_official_inputs(self, scenario: dict[str, Any]) -> None:
        """The formatted amounts are the official euro inputs rounded half up to cents."""
        official = _load(f"official/{scenario['simulationRunLabel']}.json")
        instructions = official["cashBoxInstructionList"]
        for length in range(5, 9):
            entries = _entries(scenario, length)
            assert len(entries) == len(instructions)
            for entry, instruction in zip(entries, instructions, strict=True):
                receipt = instruction["simplifiedReceipt"]
                amounts = [cents_to_amount(_to_cents(receipt[f])) for f in OFFICIAL_FIELDS]
                assert amounts == entry["amounts"], entry["receiptIdentifier"]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_key_check_value_and_start_chain(self, scenario: dict[str, Any]) -> None:
        """The Pruefwert of the AES key and the chaining value of the Startbeleg."""
        assert aes_key_check_value(scenario["base64AesKey"]) == scenario["aesKeyChecksum"]
        assert chain_value(None, scenario["cashBoxId"]) == scenario["startChainingValue"]


@pytest.mark.parametrize(
    "vector", [pytest.param(v, id=v["receiptIdentifier"]) for v in KAT_EDGE["vectors"]]
)
def test_turnover_edge_vector(vector: dict[str, Any]) -> None:
    """Negative counters and the limits of each length, with the IV."""
    key = b64_decode(KAT_EDGE["base64AesKey"])
    register_id, receipt_id = KAT_EDGE["cashBoxId"], vector["receiptIdentifier"]
    assert counter_iv(register_id, receipt_id).hex() == vector["ivHex"]
    field = encrypt_counter(key, register_id, receipt_id, vector["counterCents"], vector["length"])
    assert field == vector["standUmsatzZaehlerField"]
    assert decrypt_counter(key, register_id, receipt_id, field) == vector["counterCents"]


def test_edge_vectors_are_all_there() -> None:
    assert len(KAT_EDGE["vectors"]) == 42


class TestMiscKat:
    def test_jws_header(self) -> None:
        assert KAT_MISC["jwsProtectedHeader"].encode("ascii") == JWS_HEADER
        assert KAT_MISC["jwsProtectedHeaderB64Url"] == JWS_HEADER_B64

    def test_failure_marker_encodings(self) -> None:
        """The marker replaces the signature in JWS (base64url), QR (base64), OCR (base32)."""
        assert KAT_MISC["failureSignatureText"] == FALLBACK_TEXT
        assert (
            b64url(FALLBACK_SIGNATURE)
            == KAT_MISC["failureSignatureJwsSegment(base64url, no padding)"]
        )
        assert b64(FALLBACK_SIGNATURE) == KAT_MISC["failureSignatureQrSegment(base64)"]
        assert b32(FALLBACK_SIGNATURE) == KAT_MISC["failureSignatureOcrSegment(base32)"]

    @pytest.mark.parametrize(
        ("name", "marker"), [("stornoMarker", STORNO_MARKER), ("trainingMarker", TRAINING_MARKER)]
    )
    def test_storno_and_training_markers(self, name: str, marker: str) -> None:
        expected = KAT_MISC[name]
        assert marker == expected["base64"]
        assert b64(expected["plain"].encode("ascii")) == marker
        assert b32(expected["plain"].encode("ascii")) == expected["base32"]

    @given(st.binary(max_size=80))
    def test_base32_is_rfc4648(self, data: bytes) -> None:
        """The OCR form's own base32 gives what the standard library gives, padding included."""
        assert b32(data) == base64.b32encode(data).decode("ascii")

    @given(st.binary(max_size=80))
    def test_base64_forms_are_the_standard_librarys(self, data: bytes) -> None:
        """QR (base64) and JWS (base64url without padding) as the standard library has them."""
        assert b64(data) == base64.b64encode(data).decode("ascii")
        assert b64url(data) == base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    @given(st.lists(st.binary(max_size=80), max_size=4) | st.lists(st.binary(min_size=300)))
    def test_base32_of_each_part_is_rfc4648(self, parts: list[bytes]) -> None:
        """Parts converted together (the OCR form's three) each give their own base32,
        also beyond the length of one conversion (320 bytes)."""
        assert b32_each(parts) == [base64.b32encode(part).decode("ascii") for part in parts]

    def test_start_chaining_value(self) -> None:
        ((name, value),) = [(k, v) for k, v in KAT_MISC.items() if k.startswith("startChaining")]
        register_id = re.search(r"\('([^']*)'\)", name).group(1)  # type: ignore[union-attr]
        assert chain_value(None, register_id) == value

    def test_aes_key_check_value(self) -> None:
        ((name, value),) = [(k, v) for k, v in KAT_MISC.items() if k.startswith("aesKeyChecksum")]
        b64_key = re.search(r"\('([^']*)'", name).group(1)  # type: ignore[union-attr]
        assert aes_key_check_value(b64_key) == value

    @pytest.mark.parametrize(("value", "expected"), list(KAT_MISC["amountFormatting"].items()))
    def test_amount_formatting(self, value: str, expected: str) -> None:
        """Decimal input rounded half up to cents, then formatted without grouping."""
        assert cents_to_amount(_to_cents(value)) == expected
        assert cents_to_amount(amount_to_cents(expected)) == expected


def _receipt(mode: str, index: int) -> dict[str, Any]:
    receipt: dict[str, Any] = E2E[mode]["receipts"][index]
    return receipt


def _private_key(mode: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(E2E[mode]["privateKeyPem"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


class TestEndToEndKat:
    @pytest.mark.parametrize(("mode", "index"), E2E_RECEIPTS)
    def test_payload_text(self, mode: str, index: int) -> None:
        """The payload parses into 12 fields and prints back to the same text."""
        receipt, expected = _receipt(mode, index), E2E[mode]
        payload = Payload.parse(receipt["payload"])
        assert payload.text() == receipt["payload"]
        assert payload.suite == expected["suite"]
        assert payload.cert_serial == expected["certificateSerialField"]
        assert payload.register_id == expected["cashBoxId"]

    @pytest.mark.parametrize(("mode", "index"), E2E_RECEIPTS)
    def test_qr_ocr_and_jws(self, mode: str, index: int) -> None:
        """QR and OCR codes and the compact JWS are rebuilt bit-exactly."""
        receipt = _receipt(mode, index)
        payload, signature, header = split_jws(receipt["jws"])
        assert header == JWS_HEADER
        assert payload.text() == receipt["payload"]
        assert qr_code(payload, signature) == receipt["qr"]
        assert ocr_code(payload, signature) == receipt["ocr"]
        assert jws_compact(payload, signature) == receipt["jws"]

    @pytest.mark.parametrize(("mode", "index"), E2E_RECEIPTS)
    def test_chaining_value(self, mode: str, index: int) -> None:
        """Chained over the previous JWS, the Startbeleg over the Kassen-ID."""
        receipt = _receipt(mode, index)
        previous = _receipt(mode, index - 1)["jws"] if index else None
        value = chain_value(previous, E2E[mode]["cashBoxId"])
        assert value == receipt["chainingValue"]
        assert Payload.parse(receipt["payload"]).chain == value

    @pytest.mark.parametrize(("mode", "index"), E2E_RECEIPTS)
    def test_turnover_counter(self, mode: str, index: int) -> None:
        receipt, expected = _receipt(mode, index), E2E[mode]
        payload = Payload.parse(receipt["payload"])
        markers = {"STORNO": STORNO_MARKER, "TRAINING": TRAINING_MARKER}
        if receipt["type"] in markers:
            assert payload.counter == markers[receipt["type"]]
            return
        key = b64_decode(expected["base64AESKey"])
        cents = receipt["turnoverCounterCentsAfter"]
        field = encrypt_counter(key, expected["cashBoxId"], receipt["receiptIdentifier"], cents)
        assert field == payload.counter

    @pytest.mark.parametrize(("mode", "index"), E2E_RECEIPTS)
    def test_resigning_reproduces_the_jws(self, mode: str, index: int) -> None:
        """RFC 6979 signatures: the same key and payload give the recorded JWS."""
        receipt = _receipt(mode, index)
        payload = Payload.parse(receipt["payload"])
        if receipt["signatureDeviceDamaged"]:
            assert receipt["jws"] == jws_compact(payload, FALLBACK_SIGNATURE)
            return
        data = signing_input(payload)
        der = _private_key(mode).sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        signature = der_to_rs(der)
        assert jws_compact(payload, signature) == receipt["jws"]
        assert verify_rs(_private_key(mode).public_key(), data, signature)

    @pytest.mark.parametrize("mode", list(E2E))
    def test_key_check_value(self, mode: str) -> None:
        expected = E2E[mode]
        assert aes_key_check_value(expected["base64AESKey"]) == expected["aesKeyChecksum"]

"""The sale contract's fast forms give what the plain ones gave: the JSON reader (one
decoder for every call), the decimal strings in units, and the fingerprints (values
stored with every receipt, so a retry after an upgrade must still match them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract import load_json, parse_sale, sale_fingerprint, same_sale, scaled
from agent.errors import InvalidSale
from storage.canonical import DuplicateKey, unique_keys

PROPERTY = settings(database=None, max_examples=400)


SALE = {
    "request_id": "r-1",
    "register": "K-1",
    "kind": "standard",
    "cashier": "Jürgen",
    "lines": [
        {"text": "Käse", "qty": "0.250", "unit_price": "012.5", "vat": "reduced1"},
        {"text": "Pfand", "qty": "-1", "unit_price": "0.25", "vat": "zero"},
    ],
    "payments": [{"method": "cash", "amount": "3"}, {"method": "card", "amount": "-0.12"}],
}


class TestFingerprints:
    def test_the_fingerprint_of_a_sale_is_the_one_receipts_store(self) -> None:
        """Computed by the code before it was made faster: the values must never change."""
        expected = "s3:GpII3CD5puLt_9Foj48oidgEF5iGaGwKhw4_l_0ACPM"
        assert sale_fingerprint(parse_sale(SALE)) == expected

    def test_a_storno_without_lines_has_its_fingerprint(self) -> None:
        storno = parse_sale({"request_id": "r-2", "register": "K-1", "kind": "storno", "voids": 7})
        assert sale_fingerprint(storno) == "s3:E74_xrkbs-yeCxvdQYqbqmt1fBRd5Y7PSUixPgDuGqA"

    def test_the_money_as_sent_form_still_matches(self) -> None:
        stored = "s2:jeLpNWDCC5aeFDZ2jb4mhOdwimDHWodzN0hEE2Zi8ww"
        assert same_sale(stored, parse_sale(SALE))
        assert not same_sale(stored, parse_sale(SALE | {"request_id": "r-3"}))


def _reference_load(raw: bytes | str) -> Any:
    """What load_json did with json.loads, a new decoder per call: the value, or the
    refusal's words."""
    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        return f"(document): the key {exc.args[0]!r} appears twice in one object [duplicate-key]"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"(document): not valid JSON: {exc} [json]"


def _outcome(raw: bytes | str) -> Any:
    try:
        return load_json(raw)
    except InvalidSale as exc:
        return str(exc)


DOCUMENTS: list[bytes | str] = [
    '{"a": [1, {"b": "\\u00fc"}], "c": null}',
    '  {"a": 1}  \n',
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1, "b": 1}}',
    "[1, 2]",
    '"text"',
    '{"a": 1} x',
    "",
    "not json",
    '{"a": NaN}',
    "\ufeff{}",
    b'{"a": "\xc3\xbc"}',
    b"\xef\xbb\xbf{}",
    b"\xef\xbb\xbf\xef\xbb\xbf{}",
    '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"),
    b'{"a": "\xff"}',
    b"",
    bytearray(b'{"a": 1}'),
]


@pytest.mark.parametrize("raw", DOCUMENTS)
def test_load_json_reads_as_json_loads_did(raw: bytes | str) -> None:
    assert _outcome(raw) == _reference_load(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("\ufeff{}", "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
        (b"\xef\xbb\xbf\xef\xbb\xbf{}", "Expecting value: line 1 column 1 (char 0)"),
        ('{"a": 1} x', "Extra data: line 1 column 10 (char 9)"),
    ],
)
def test_load_json_refuses_in_json_loads_words(raw: bytes | str, message: str) -> None:
    with pytest.raises(InvalidSale) as refused:
        load_json(raw)
    assert refused.value.message == f"not valid JSON: {message}"


def _reference_scaled(number: str, places: int) -> int:
    """The form scaled had before it read the digits with one int() call."""
    whole, _, frac = number.partition(".")
    value = abs(int(whole)) * 10**places
    if frac:
        value += int(frac) * 10 ** (places - len(frac))
    return -value if whole.startswith("-") else value


@st.composite
def _decimals(draw: st.DrawFn) -> tuple[str, int]:
    places = draw(st.integers(0, 3))
    sign = draw(st.sampled_from(["", "-"]))
    whole = draw(st.text("0123456789", min_size=1, max_size=10))
    frac = draw(st.text("0123456789", min_size=0, max_size=places))
    return (f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"), places


@PROPERTY
@given(_decimals())
def test_scaled_counts_as_before(case: tuple[str, int]) -> None:
    number, places = case
    assert scaled(number, places) == _reference_scaled(number, places)


@pytest.mark.parametrize(("number", "places"), [("1.234", 2), ("-0.0001", 3), ("5.0", 0)])
def test_scaled_refuses_more_decimals_than_places(number: str, places: int) -> None:
    with pytest.raises(ValueError, match="decimals"):
        scaled(number, places)

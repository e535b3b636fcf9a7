"""The stored forms of a receipt (agent/receipt_records.py) that are built as text."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.receipt_records import Stored, local_stamp, receipt_event
from storage.canonical import canonical_json

# every character class JSON escapes or keeps: quotes, backslashes, controls, umlauts, and
# the very sequences the event's text builder looks for
PIECES = [*'ab"\\\n\x01\u00e4\u20ac\U0001f600:,[]{}', '","x":', '"lines":', ',"payments":']
TEXT = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
CENTS = st.integers(-(10**12), 10**12)


def _event_mapping(stored: Stored, document: dict[str, Any]) -> dict[str, Any]:
    """The event as it was built before it was built as text: a mapping for canonical_json."""
    return {
        "number": stored.number,
        "receipt_id": stored.receipt_id,
        "kind": stored.kind,
        "jws": stored.jws,
        "signature_state": stored.state,
        "unit_id": stored.unit_id,
        "voids_number": stored.voids,
        "request_id": stored.request_id,
        "turnover_cents": stored.turnover,
        "issued_at": stored.issued_at,
        "amounts": list(stored.amounts),
        "lines": document["lines"],
        "payments": document["payments"],
        "document_sha256": hashlib.sha256(stored.document.encode()).hexdigest(),
    }


@st.composite
def _receipts(draw: st.DrawFn) -> tuple[Stored, dict[str, Any]]:
    line = st.tuples(TEXT, TEXT, TEXT, TEXT, CENTS).map(list)
    document: dict[str, Any] = {
        "cashier": draw(st.none() | TEXT),
        "lines": draw(st.lists(line, max_size=3)),
        "payments": draw(st.lists(st.tuples(TEXT, CENTS).map(list), max_size=2)),
        "text": draw(st.lists(TEXT, max_size=3)),
    }
    if draw(st.booleans()):
        document["period"] = draw(TEXT)
    if draw(st.booleans()):
        document["reissue_of"] = draw(st.integers(1, 10**9))
    stored = Stored(
        draw(TEXT),
        draw(st.integers(1, 10**12)),
        draw(TEXT),
        draw(st.sampled_from(["standard", "storno", "null", "sammelbeleg"])),
        draw(st.none() | TEXT),
        draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)),
        draw(TEXT),
        draw(st.tuples(CENTS, CENTS, CENTS, CENTS, CENTS)),
        draw(CENTS),
        draw(TEXT),
        draw(st.sampled_from(["signed", "fallback", "unsigned"])),
        draw(TEXT),
        draw(st.none() | st.integers(1, 10**12)),
        canonical_json(document),
    )
    return stored, document


@settings(max_examples=200)
@given(receipt=_receipts())
def test_receipt_event_is_the_canonical_json_of_its_mapping(
    receipt: tuple[Stored, dict[str, Any]],
) -> None:
    stored, document = receipt
    assert receipt_event(stored) == canonical_json(_event_mapping(stored, document))


def test_receipt_event_of_a_sale() -> None:
    document = {
        "cashier": "Jürgen",
        "lines": [['Käse "alt"', "1,5", "3.20", "reduced1", 480]],
        "payments": [[':"x":', 240], ["cash", 240]],  # a ": that ends no key
        "text": ["Kasse K1"],
    }
    stored = Stored(
        "K1", 7, "K1-7", "standard", "r7", None, "2026-03-02T11:00:00", (0, 480, 0, 0, 0),
        960, "a.b.c", "signed", "u1", None, canonical_json(document),
    )  # fmt: skip
    assert receipt_event(stored) == canonical_json(_event_mapping(stored, document))


@given(
    now=st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)),
    zone=st.sampled_from(["Europe/Vienna", "UTC", "America/St_Johns", "Asia/Kathmandu"]),
)
def test_local_stamp_is_the_local_time_in_whole_seconds(now: dt.datetime, zone: str) -> None:
    local = now.astimezone(ZoneInfo(zone))
    assert local_stamp(now, zone) == local.replace(tzinfo=None, microsecond=0).isoformat()

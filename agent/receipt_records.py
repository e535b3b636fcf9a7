"""Receipts before and as they are stored: the draft the caller decides, the fields its
register gives it (date, turnover counter), the stored row, its document and journal
event, and the answers a lost signature leaves behind."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from agent.at_rksv import STORNO_MARKER, TRAINING_MARKER, Payload, encrypt_counter, jws_compact
from agent.contract import ReceiptResult
from agent.errors import FiscalError, InvalidSale, NotFound, WaitsForUnit
from agent.receipt_text import TextFacts, render_lines
from agent.receipt_view import Amounts
from storage.journal import canonical_json

__all__ = [
    "COUNTED",
    "KINDS",
    "MUST_SIGN",
    "ZERO",
    "Draft",
    "Line",
    "Stored",
    "any_lost",
    "check_id",
    "counter_field",
    "intended",
    "local_stamp",
    "lost_answer",
    "raise_if_lost",
    "receipt_date",
    "receipt_event",
    "receipt_row",
    "stored_lines",
    "stored_receipt",
    "sum_by_vat",
]

KINDS = (
    "start",
    "standard",
    "storno",
    "training",
    "null",
    "monthly",
    "yearly",
    "closing",
    "sammelbeleg",
)
MUST_SIGN = frozenset({"start", "yearly", "sammelbeleg"})
COUNTED = frozenset({"standard", "storno"})  # the kinds whose amounts the counter adds
ZERO: Amounts = (0, 0, 0, 0, 0)
_VATS = ("normal", "reduced1", "reduced2", "zero", "special")
_json_str = encode_basestring  # a string as canonical JSON writes it (ensure_ascii=False)
_NOT_A_KEY = frozenset("\\[,:{")  # what comes before a quote that does not close a key
Line = tuple[str, str, str, str, int]  # text, qty, unit price, vat class, total cents


@dataclass(slots=True)  # not frozen: its __init__ would set each field by object.__setattr__
class Draft:
    """A receipt before it has a number: everything the caller decides (nothing changes it)."""

    register_id: str
    kind: str
    amounts: Amounts = ZERO
    request_id: str | None = None
    sale_hash: str | None = None
    voids: sqlite3.Row | None = None
    lines: tuple[Line, ...] = ()
    payments: tuple[tuple[str, int], ...] = ()
    cashier: str | None = None
    receipt_id: str | None = None  # override (scenario replay); default from the format
    issued_at: str | None = None  # override (scenario replay); default from the clock
    unit_position: int | None = None  # override (scenario replay); default the active unit
    force_sign: bool = False  # remedies: sign even while the outage is open, or fail
    reissue_of: sqlite3.Row | None = None  # the unsigned receipt this one replaces
    voided_by: int | None = None  # the Storno that took ``reissue_of`` back, if it counted
    period: str | None = None  # "YYYY-MM" of a Monats-/Jahresbeleg
    # a Schlussbeleg the unit does not sign carries the failure marker (rksv.md 5)
    failed_ok: bool = False


class Stored(NamedTuple):
    """A receipt as it is stored: its ``receipts`` row (the register moves on to its number,
    counter, JWS and date; :func:`receipt_event` is its journal event). JSON-able: an intent keeps
    one. A named tuple: a frozen dataclass costs microseconds per sale to build."""

    register_id: str
    number: int
    receipt_id: str
    kind: str
    request_id: str | None
    sale_hash: str | None
    issued_at: str
    amounts: Amounts
    turnover: int
    jws: str
    state: str
    unit_id: str
    voids: int | None
    document: str  # canonical JSON


def receipt_date(reg: sqlite3.Row, draft: Draft, now: dt.datetime) -> str:
    """Field 4 of ``draft``'s receipt on register ``reg``: its own date, or ``now``."""
    own = draft.issued_at
    stamp = own if own is not None else local_stamp(now, reg["timezone"])
    # dates never go back within a register (a clock set back must not reorder the DEP)
    last = reg["last_issued_at"]
    return last if last is not None and stamp < last else stamp


def local_stamp(now: dt.datetime, timezone: str) -> str:
    """Field 4 of a receipt: ``now`` as local time of ``timezone``, whole seconds."""
    # its first 19 characters (the year has 4 digits): no replace(), a new datetime
    return now.astimezone(_zone(timezone)).isoformat()[:19]


def counter_field(reg: sqlite3.Row, kind: str, receipt_id: str, turnover: int) -> str:
    """Field 6 of a ``kind`` receipt on register ``reg``: its encrypted turnover counter,
    or the Storno or Training marker.

    A Storno counts too, though its field is the marker: a counter it took beyond the
    limit would refuse every later receipt, the Schlussbeleg included.

    Raises:
        FiscalError: ``turnover`` does not fit the register's counter.
    """
    lowest, highest = _counter_limits(reg["counter_bytes"])
    if not lowest <= turnover <= highest:
        raise FiscalError(_counter_overflow(reg, turnover))
    if kind == "storno":
        return STORNO_MARKER
    if kind == "training":
        return TRAINING_MARKER
    key = _aes_key(reg["aes_key"])
    return encrypt_counter(key, reg["id"], receipt_id, turnover, reg["counter_bytes"])


@functools.cache  # per receipt: 5 to 16 bytes, two powers each
def _counter_limits(size: int) -> tuple[int, int]:
    """The smallest and the largest turnover, in cents, a ``size``-byte counter holds
    (big-endian two's complement, rksv.md 3)."""
    return -(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1


def _counter_overflow(reg: sqlite3.Row, turnover: int) -> str:
    """Why a receipt that would take the counter to ``turnover`` is refused: the limit of
    the register's counter, and whether the stored counter still fits (then receipts that
    keep it within the limit go on; only this one is refused, with no number used)."""
    size = reg["counter_bytes"]
    lowest, highest = _counter_limits(size)
    bound = f"the largest turnover its {size} bytes hold, {_euros(highest)} EUR"
    if turnover < lowest:
        bound = f"the smallest turnover its {size} bytes hold, {_euros(lowest)} EUR"
    now = reg["turnover_cents"]
    start = (
        f"register {reg['id']}: this receipt would take the turnover counter to"
        f" {_euros(turnover)} EUR, beyond {bound}; it is refused and used no number"
    )
    if not lowest <= now <= highest:  # only a Storno of an earlier version took it there
        return (
            f"{start}. The counter already stands beyond the limit, at {_euros(now)} EUR:"
            " only receipts that bring it back within go through"
        )
    return (
        f"{start}. The counter stands at {_euros(now)} EUR and still fits: receipts that"
        " keep it within the limit (smaller or negative sales, the Storno of a sale) go"
        " through. To go beyond it, close the register (Schlussbeleg) and start a new one"
        " on 8 counter bytes"
    )


def _euros(cents: int) -> str:
    """``cents`` as euros with a point, for messages: ``-1234.50``."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


@functools.lru_cache(maxsize=64)
def _aes_key(text: str) -> bytes:
    return base64.b64decode(text)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def stored_receipt(  # noqa: PLR0917 - partial() fixes the receipt, the signing adds the rest
    draft: Draft,
    number: int,
    payload: Payload,
    data: bytes,
    unit_id: str,
    turnover: int,
    signature: bytes,
    state: str,
) -> tuple[Stored, dict[str, Any]]:
    """The receipt to store once ``data`` is signed (or not: ``state``), and its document."""
    jws = jws_compact(data, signature)
    document = _document(draft.register_id, draft, payload, state)
    voids = None if draft.voids is None else draft.voids["number"]
    stored = Stored(
        draft.register_id,
        number,
        payload.receipt_id,
        draft.kind,
        draft.request_id,
        draft.sale_hash,
        payload.issued_at,
        draft.amounts,
        turnover,
        jws,
        state,
        unit_id,
        voids,
        canonical_json(document),
    )
    return stored, document


def receipt_event(stored: Stored) -> str:
    """The data of ``stored``'s ``receipt.issued`` journal event, in canonical JSON.

    Built as text, keys in sorted order: the JSON encoder's setup costs more than the
    event (tests/agent/test_receipt_records.py pins it to ``canonical_json`` of the event's
    mapping). The sale itself (lines, payments) is taken from the document, which is
    canonical too; the printed text is derivable and only its hash is journaled.
    """
    document = stored.document
    voids = stored.voids
    request_id = stored.request_id
    return "".join(
        [
            '{"amounts":[',
            ",".join(map(str, stored.amounts)),
            '],"document_sha256":"',
            hashlib.sha256(document.encode()).hexdigest(),
            '","issued_at":',
            _json_str(stored.issued_at),
            ',"jws":',
            _json_str(stored.jws),
            ',"kind":',
            _json_str(stored.kind),
            ',"lines":',
            _value_text(document, "lines"),
            ',"number":',
            str(stored.number),
            ',"payments":',
            _value_text(document, "payments"),
            ',"receipt_id":',
            _json_str(stored.receipt_id),
            ',"request_id":',
            "null" if request_id is None else _json_str(request_id),
            ',"signature_state":',
            _json_str(stored.state),
            ',"turnover_cents":',
            str(stored.turnover),
            ',"unit_id":',
            _json_str(stored.unit_id),
            ',"voids_number":',
            "null" if voids is None else str(voids),
            "}",
        ]
    )


def _value_text(document: str, key: str) -> str:
    """The text of ``key``'s value in ``document``, a canonical JSON object with no object
    inside, and a key after ``key``.

    In a string a quote is escaped, so ``"key":`` is found only as the key. A ``":`` is the
    end of a key unless its quote opens a string (after ``[``, ``,``, ``:`` or ``{``) or is
    escaped (after a backslash); the last ``,"`` before the next key's end ends the value.
    """
    start = document.index(f'"{key}":') + len(key) + 3
    end = document.index('":', start)
    while document[end - 1] in _NOT_A_KEY:  # a string that holds or begins with ":
        end = document.index('":', end + 1)
    return document[start : document.rindex(',"', start, end)]


def _document(register_id: str, draft: Draft, payload: Payload, state: str) -> dict[str, Any]:
    facts = TextFacts(
        register_id,
        payload.receipt_id,
        draft.kind,
        payload.issued_at,
        state,
        draft.amounts,
        draft.lines,
        draft.payments,
        draft.cashier,
        None if draft.voids is None else draft.voids["receipt_id"],
        None if draft.reissue_of is None else draft.reissue_of["receipt_id"],
        draft.period,
    )
    document: dict[str, Any] = {
        "lines": [list(ln) for ln in draft.lines],
        "payments": [list(p) for p in draft.payments],
        "cashier": draft.cashier,
        "text": render_lines(facts),
    }
    if draft.reissue_of is not None:
        document["reissue_of"] = draft.reissue_of["number"]
    if draft.period is not None:
        document["period"] = draft.period
    return document


def intended(intent: dict[str, Any]) -> Stored:
    """The ``unsigned`` receipt a signing intent holds."""
    fields = dict(intent["receipt"])
    fields.pop("event", None)  # an intent of an earlier version kept it; it is derivable
    return Stored(**{**fields, "amounts": tuple(fields["amounts"])})


def receipt_row(
    conn: sqlite3.Connection, register_id: str, number: int | None
) -> sqlite3.Row | None:
    """Receipt ``number`` of ``register_id`` (``None``: no such receipt, or no number)."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM receipts WHERE register_id = ? AND number = ?", (register_id, number)
    ).fetchone()
    return row


def known_receipt(conn: sqlite3.Connection, register_id: str, number: int) -> sqlite3.Row:
    """Receipt ``number`` of ``register_id``; raises ``NotFound`` when there is none."""
    row = receipt_row(conn, register_id, number)
    if row is None:
        raise NotFound(f"register {register_id} has no receipt {number}")
    return row


def lost_answer(result: ReceiptResult) -> bool:
    """A receipt that had to be signed came back ``unsigned``: its answer was lost."""
    return result.signature_state != "signed" and result.kind in MUST_SIGN


def any_lost(results: Sequence[ReceiptResult]) -> bool:
    return any(r.signature_state == "unsigned" for r in results)


def raise_if_lost(result: ReceiptResult, *, always: bool = False) -> None:
    """After the commit: a lost answer leaves the obligation open (it waits)."""
    if lost_answer(result) or (always and result.signature_state == "unsigned"):
        raise WaitsForUnit(
            f"the {result.kind} receipt {result.receipt_id} was sent to the chain service,"
            " but no answer came: it keeps its number as an unsigned receipt, and what it"
            " was for waits until the service answers"
        )


def check_id(field_name: str, value: str) -> None:
    if not value or "_" in value or len(value) > 64 or not value.isprintable():
        raise InvalidSale(
            field_name, "id-format", f"{value!r} must be 1-64 printable characters without '_'"
        )


def sum_by_vat(lines: Sequence[Line]) -> Amounts:
    sums = dict.fromkeys(_VATS, 0)
    for *_, vat, total in lines:
        sums[vat] += total
    return (sums["normal"], sums["reduced1"], sums["reduced2"], sums["zero"], sums["special"])


def stored_lines(row: sqlite3.Row) -> list[Line]:
    return [tuple(x) for x in json.loads(row["document"])["lines"]]

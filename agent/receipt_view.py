"""Stored receipts as the POS sees them: the :class:`ReceiptResult` of a journal row.

A stored receipt never changes (DESIGN.md invariant 7); what became of an ``unsigned`` one
(table ``receipt_resolutions``, :mod:`agent.remedy`) is added to its view here: the result
names the resolution, and its lines end with what happened instead of the promise the
original paper made (:func:`agent.receipt_text.with_notice`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from agent.at_rksv import Payload, ocr_code, qr_code, split_jws
from agent.contract import ReceiptResult
from agent.receipt_text import resolution_notice, with_notice

__all__ = [
    "AMOUNT_COLUMNS",
    "Amounts",
    "Resolution",
    "current_result",
    "resolution_of",
    "resolutions",
    "result_from",
    "result_from_parts",
    "result_from_row",
]

Amounts = tuple[int, int, int, int, int]  # cents: normal, reduced1, reduced2, zero, special
AMOUNT_COLUMNS = (
    "amount_normal",
    "amount_reduced1",
    "amount_reduced2",
    "amount_zero",
    "amount_special",
)
State = Literal["signed", "fallback", "unsigned"]
ResolutionKind = Literal["adopted", "superseded", "kept"]
Row = Mapping[str, Any] | sqlite3.Row  # a ``receipts`` row


@dataclass(frozen=True, slots=True)
class Resolution:
    """What became of an ``unsigned`` receipt: ``adopted`` (the chain service had signed
    it), ``superseded`` (reissued as ``replaced_by`` and/or voided by the Storno
    ``voided_by``; a lost Sammel- or Jahresbeleg by the signed one) or ``kept`` (a zero
    receipt that stands with the failure marker). Receipts as (number, Belegnummer)."""

    kind: ResolutionKind
    replaced_by: tuple[int, str] | None = None
    voided_by: tuple[int, str] | None = None

    def fields(self) -> dict[str, Any]:
        """The result's fields that name it (:class:`ReceiptResult`): receipts by number."""
        return {
            "resolution": self.kind,
            "replaced_by": None if self.replaced_by is None else self.replaced_by[0],
            "voided_by": None if self.voided_by is None else self.voided_by[0],
        }

    def notice(self) -> list[str]:
        """The lines that say so on paper."""
        replaced, voided = (None if r is None else r[1] for r in (self.replaced_by, self.voided_by))
        return resolution_notice(self.kind, replaced, voided)


# the resolution of unsigned receipts, with the receipts it names: the replacement and
# the Storno that voided a superseded one, both as the remedy stored them
_RESOLUTIONS = """
SELECT x.number, x.resolution, p.number, p.receipt_id, v.number, v.receipt_id
FROM receipt_resolutions x
LEFT JOIN receipts p ON p.register_id = x.register_id AND p.number = x.replacement_number
LEFT JOIN receipts v ON v.register_id = x.register_id AND v.number = x.voided_number
WHERE x.register_id = ? AND x.number IN ({numbers})
"""


def resolutions(
    conn: sqlite3.Connection, register_id: str, numbers: Iterable[int]
) -> dict[int, Resolution]:
    """The resolutions of those of ``numbers`` (receipts of ``register_id``) that have one."""
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    query = _RESOLUTIONS.format(numbers=", ".join("?" * len(wanted)))
    found = {}
    for number, stored, replaced, replaced_id, voided, voided_id in conn.execute(
        query, (register_id, *wanted)
    ):
        by = None if replaced is None else (int(replaced), str(replaced_id))
        storno = None if voided is None else (int(voided), str(voided_id))
        # superseded by nothing: a zero receipt that stands as it is
        kind = "kept" if stored == "superseded" and by is None and storno is None else stored
        found[int(number)] = Resolution(cast(ResolutionKind, kind), by, storno)
    return found


def resolution_of(conn: sqlite3.Connection, row: Row) -> Resolution | None:
    """The resolution of the receipt ``row``; ``None`` for one not (or not yet) remedied."""
    if row["signature_state"] != "unsigned":  # only unsigned receipts are: no query
        return None
    return resolutions(conn, row["register_id"], [row["number"]]).get(row["number"])


def current_result(conn: sqlite3.Connection, row: Row) -> ReceiptResult:
    """The result of a ``receipts`` row as it stands now: with its resolution, if any."""
    return result_from_row(row, resolution_of(conn, row))


def result_from(  # noqa: PLR0917 - the stored facts of one receipt
    register_id: str,
    number: int,
    kind: str,
    state: str,
    jws: str,
    document: Mapping[str, Any],
    resolution: Resolution | None = None,
) -> ReceiptResult:
    """Build the POS result; QR and OCR forms are derived from the JWS. An unsigned
    receipt's ``resolution`` is named, and its lines say what happened."""
    payload, signature, _ = split_jws(jws)
    result = result_from_parts(register_id, number, kind, state, payload, signature, jws, document)
    if resolution is None:
        return result
    lines = with_notice(result.lines, resolution.notice())
    return result.model_copy(update={**resolution.fields(), "lines": lines})


def result_from_parts(  # noqa: PLR0917 - the facts of one receipt
    register_id: str,
    number: int,
    kind: str,
    state: str,
    payload: Payload,
    signature: bytes,
    jws: str,
    document: Mapping[str, Any],
) -> ReceiptResult:
    """Build the POS result from the payload and signature just made (no JWS parsing)."""
    receipt_id = payload.receipt_id
    # every value is made by us from checked parts: no validation round trip needed
    return ReceiptResult.model_construct(
        register_id=register_id,
        number=number,
        receipt_id=receipt_id,
        kind=kind,
        signature_state=cast(State, state),
        qr=qr_code(payload, signature),
        ocr=ocr_code(payload, signature),
        jws=jws,
        issued_at=payload.issued_at,
        lines=list(document["text"]),
        resolution=None,  # a new receipt is not remedied (given: defaults cost the hot path)
        replaced_by=None,
        voided_by=None,
    )


def result_from_row(row: Row, resolution: Resolution | None = None) -> ReceiptResult:
    """The result of a ``receipts`` row (a ``sqlite3.Row`` or a SQLAlchemy row mapping),
    as stored, or with its ``resolution`` (:func:`current_result` looks it up)."""
    return result_from(
        row["register_id"],
        row["number"],
        row["kind"],
        row["signature_state"],
        row["jws"],
        json.loads(row["document"]),
        resolution,
    )

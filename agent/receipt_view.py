"""Stored receipts as the POS sees them: the :class:`ReceiptResult` of a journal row."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, cast

from agent.at_rksv import Payload, ocr_code, qr_code, split_jws
from agent.contract import ReceiptResult

__all__ = ["AMOUNT_COLUMNS", "Amounts", "result_from", "result_from_parts", "result_from_row"]

Amounts = tuple[int, int, int, int, int]  # cents: normal, reduced1, reduced2, zero, special
AMOUNT_COLUMNS = (
    "amount_normal",
    "amount_reduced1",
    "amount_reduced2",
    "amount_zero",
    "amount_special",
)
State = Literal["signed", "fallback", "unsigned"]


def result_from(  # noqa: PLR0917 - the stored facts of one receipt
    register_id: str,
    number: int,
    kind: str,
    state: str,
    jws: str,
    document: Mapping[str, Any],
) -> ReceiptResult:
    """Build the POS result; QR and OCR forms are derived from the JWS."""
    payload, signature, _ = split_jws(jws)
    return result_from_parts(register_id, number, kind, state, payload, signature, jws, document)


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
    )


def result_from_row(row: Mapping[str, Any]) -> ReceiptResult:
    """The result of a ``receipts`` row (a ``sqlite3.Row`` or a SQLAlchemy row mapping)."""
    return result_from(
        row["register_id"],
        row["number"],
        row["kind"],
        row["signature_state"],
        row["jws"],
        json.loads(row["document"]),
    )

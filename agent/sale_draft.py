"""A POS sale as a receipt draft: its lines, amounts per VAT class and payments, and the
receipt a Storno voids (:func:`draft_for_sale`, inside the sale's write transaction)."""

from __future__ import annotations

import sqlite3

from agent.contract import Sale, line_total_cents, scaled
from agent.errors import InvalidSale
from agent.receipt_records import Draft, receipt_row, stored_lines, sum_by_vat
from agent.receipt_view import AMOUNT_COLUMNS, Amounts
from agent.remedy import current_version

__all__ = ["VOIDED", "draft_for_sale"]

# whether a receipt is voided already, asked inside the Storno's write transaction:
# ``voids_number = ?`` implies the WHERE of ix_receipts_voids (0009), which holds only the
# Stornos, so the lock is not held while the register's whole history is read
VOIDED = "SELECT 1 FROM receipts WHERE register_id = ? AND voids_number = ?"


def draft_for_sale(conn: sqlite3.Connection, reg: sqlite3.Row, sale: Sale, sale_hash: str) -> Draft:
    """The :class:`Draft` of a checked POS sale on register ``reg``: its lines with their
    totals and its amounts per VAT class; a Storno takes the voided receipt's, negated.

    Raises:
        InvalidSale: a Storno of a receipt that does not exist, is no standard receipt or
            is voided already, or whose payments do not add up to minus its total.
    """
    payments = tuple((p.method, scaled(p.amount, 2)) for p in sale.payments)
    if sale.kind == "storno":
        voided = _voidable(conn, reg["id"], sale.voids)
        amounts: Amounts = tuple(-voided[c] for c in AMOUNT_COLUMNS)
        lines = tuple((t, q, p, v, -c) for t, q, p, v, c in stored_lines(voided))
        refund = sum(amounts)
        if payments and (paid := sum(a for _, a in payments)) != refund:
            raise InvalidSale(
                "payments",
                "sum-matches-lines",
                f"storno payments add up to {_euros(paid)} but must add up to minus the"
                f" voided total, {_euros(refund)} (receipt {voided['number']} totals"
                f" {_euros(-refund)}), or be left out",
            )
        return Draft(
            reg["id"],
            "storno",
            amounts,
            sale.request_id,
            sale_hash,
            voided,
            lines,
            payments,
            sale.cashier,
        )
    lines = tuple(
        (ln.text, ln.qty, ln.unit_price, ln.vat, line_total_cents(ln)) for ln in sale.lines
    )
    return Draft(
        reg["id"],
        sale.kind,
        sum_by_vat(lines),
        sale.request_id,
        sale_hash,
        None,
        lines,
        payments,
        sale.cashier,
    )


def _voidable(conn: sqlite3.Connection, register_id: str, number: int | None) -> sqlite3.Row:
    row = receipt_row(conn, register_id, number)
    if row is None:
        raise InvalidSale(
            "voids", "voids-unknown", f"register {register_id} has no receipt number {number}"
        )
    if row["kind"] != "standard":
        raise InvalidSale("voids", "voids-kind", f"a {row['kind']} receipt cannot be voided")
    current = current_version(conn, row)
    if current["number"] != row["number"]:  # the remedy's own Storno voids the old one
        raise InvalidSale(
            "voids",
            "voids-reissued",
            f"receipt {number} was issued unsigned and reissued as receipt"
            f" {current['number']}, which stands for the sale now: void {current['number']}",
        )
    if conn.execute(VOIDED, (register_id, number)).fetchone():
        raise InvalidSale("voids", "already-voided", f"receipt {number} is already voided")
    return row


def _euros(cents: int) -> str:
    """``cents`` as the POS writes amounts: ``-6.40``, ``0.05``."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"

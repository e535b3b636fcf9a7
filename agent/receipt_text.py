"""The printable text of a receipt: a pure function of the receipt's facts.

The lines are stored with the receipt, so a reprint shows exactly what was printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.at_rksv import FALLBACK_TEXT
from agent.contract import scaled

__all__ = ["TextFacts", "render_lines"]

WIDTH = 42
_VAT_LETTER = {"normal": "A", "reduced1": "B", "reduced2": "C", "zero": "D", "special": "E"}
_VAT_LABEL = {
    "normal": "A 20%",
    "reduced1": "B 10%",
    "reduced2": "C 13%",
    "zero": "D 0%",
    "special": "E 19%/4,9%",
}
_VAT_LINES = tuple((vat, f"  {label}") for vat, label in _VAT_LABEL.items())  # in print order
_TITLES = {
    "start": "STARTBELEG",
    "storno": "STORNOBUCHUNG",
    "training": "TRAININGSBUCHUNG",
    "null": "NULLBELEG",
    "monthly": "MONATSBELEG",
    "yearly": "JAHRESBELEG",
    "closing": "SCHLUSSBELEG",
    "sammelbeleg": "SAMMELBELEG",
}


@dataclass(frozen=True, slots=True)
class TextFacts:
    register_id: str
    receipt_id: str
    kind: str
    issued_at: str
    signature_state: str
    total_cents: int
    lines: Sequence[tuple[str, str, str, str, int]]  # text, qty, unit price, vat, total cents
    payments: Sequence[tuple[str, int]]
    cashier: str | None = None
    voids_receipt_id: str | None = None
    replaces_receipt_id: str | None = None  # a reissue of an unsigned receipt


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100},{abs(cents) % 100:02d}"


def _pair(left: str, right: str) -> str:
    room = WIDTH - len(right) - 1
    return f"{left[:room]:<{room}} {right}"


def _item_lines(facts: TextFacts) -> list[str]:
    out: list[str] = []
    for text, qty, price, vat, total in facts.lines:
        if scaled(qty, 3) != 1000:
            out.append(f"  {qty} x {price.replace('.', ',')}")
        out.append(_pair(text, f"{_money(total)} {_VAT_LETTER[vat]}"))
    return out


def render_lines(facts: TextFacts) -> list[str]:
    """The receipt as lines of at most 42 characters (80 mm paper, font A)."""
    out = [f"Kasse {facts.register_id}", f"Beleg {facts.receipt_id}"]
    out.append(facts.issued_at.replace("T", " "))
    if facts.cashier:
        out.append(f"Bediener: {facts.cashier}")
    if facts.kind in _TITLES:
        out.append(f"*** {_TITLES[facts.kind]} ***")
    if facts.voids_receipt_id is not None:
        out.append(f"Storno zu Beleg {facts.voids_receipt_id}")
    if facts.replaces_receipt_id is not None:
        out.append(f"Ersatz für unsignierten Beleg {facts.replaces_receipt_id}")
    out.append("-" * WIDTH)
    out.extend(_item_lines(facts))
    out.append("-" * WIDTH)
    out.append(_pair("SUMME EUR", _money(facts.total_cents)))
    out.extend(_pair(f"  {method}", _money(amount)) for method, amount in facts.payments)
    used = {line[3] for line in facts.lines}
    out.extend(label for vat, label in _VAT_LINES if vat in used)
    if facts.signature_state == "fallback":
        out.append(FALLBACK_TEXT)
    if facts.signature_state == "unsigned":
        out.append("Signatur ungewiss: wird nachsigniert oder ersetzt")
    return out

"""The printable text of a receipt: a pure function of the receipt's facts.

The lines are stored with the receipt, so a reprint shows what was printed (only an
unsigned receipt's copy ends with what became of it: :func:`with_notice`). No
line is wider than the paper (:data:`WIDTH` columns) and nothing the POS sent is cut: a
long text continues on the next lines (the customary designation of the goods must be
on the receipt, § 132a BAO), and an item's amount stands beside its last line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.at_rksv import FALLBACK_TEXT, cents_to_amount
from agent.contract import scaled

if TYPE_CHECKING:  # receipt_view builds results with this module's notices
    from agent.receipt_view import Amounts

__all__ = [
    "MARKED_STATES",
    "UNSIGNED_NOTICE",
    "WIDTH",
    "TextFacts",
    "columns",
    "headings",
    "render_lines",
    "resolution_notice",
    "vat_split",
    "with_notice",
    "wrap",
    "zero_width",
]

WIDTH = 42
# the states whose JWS carries the failure marker: an `unsigned` receipt (a chain service's
# unknown outcome) chains like a fallback one, so its paper says the unit failed too
# (§ 17 Abs 4 RKSV), with the note that its signature is being cleared up
MARKED_STATES = frozenset({"fallback", "unsigned"})
# what an unsigned receipt's paper says after the marker: true whatever the remedy finds
# (the service signed it: adopted; it did not: reissued, or a zero receipt kept as it is)
UNSIGNED_NOTICE = "Signatur ungewiss: wird geklärt"
# the notices of unsigned receipts stored before, each as the last lines of the text
_OLD_NOTICES = (("Signatur ungewiss:", "wird nachsigniert oder ersetzt"),)
_VAT_LETTER = {  # after an item's amount
    "normal": " A",
    "reduced1": " B",
    "reduced2": " C",
    "zero": " D",
    "special": " E",
}
# each class's label and percent, in the order of the amounts (Amounts): A to E; `special`
# stands for two rates (19 %, 4,9 %): no net or tax for it
_VAT_RATES = (
    ("  A 20%", 20),
    ("  B 10%", 10),
    ("  C 13%", 13),
    ("  D 0%", 0),
    ("  E 19%/4,9%", None),
)
# a column of the rate table holds 9 characters of amount (and a space before): the cents
# from -9999999 (-99999,99) to 99999999 (999999,99)
_TABLE_AMOUNTS = range(-(10**7) + 1, 10**8)
_RATE_ROW = "%-12s%10s%10s%10s"  # label, net, tax, gross
_RATE_HEAD = _RATE_ROW % ("MwSt", "Netto", "Steuer", "Brutto")
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


# not frozen (nothing hashes or changes it): one per receipt, and a frozen __init__ sets
# each field through object.__setattr__, about four times slower
@dataclass(slots=True)
class TextFacts:
    register_id: str
    receipt_id: str
    kind: str
    issued_at: str
    signature_state: str
    amounts: Amounts  # the gross per VAT class: what is signed, also without item lines
    lines: Sequence[tuple[str, str, str, str, int]]  # text, qty, unit price, vat, total cents
    payments: Sequence[tuple[str, int]]
    cashier: str | None = None
    voids_receipt_id: str | None = None
    replaces_receipt_id: str | None = None  # a reissue of an unsigned receipt
    period: str | None = None  # "YYYY-MM": the month a Monats-/Jahresbeleg closes

    @property
    def total_cents(self) -> int:
        return sum(self.amounts)


def headings(kind: str, signature_state: str) -> frozenset[str]:
    """The lines of a receipt of this kind and state that are printed bold: its title and
    the failure notices, exactly, so no text of the POS can pass for one elsewhere."""
    title = _TITLES.get(kind)
    lines = {f"*** {title} ***"} if title is not None else set()
    if signature_state in MARKED_STATES:
        lines.add(FALLBACK_TEXT)
    if signature_state == "unsigned":
        lines.add(UNSIGNED_NOTICE)
    return frozenset(lines)


def zero_width(char: str) -> bool:
    """True for a mark printed on the character before it (an accent sent apart)."""
    return unicodedata.category(char) in ("Mn", "Me")


def _char_columns(char: str) -> int:
    """0 for a :func:`zero_width` mark, 2 for a wide (East Asian) character, else 1."""
    if zero_width(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def columns(text: str) -> int:
    """The columns ``text`` takes on paper: one per character, none for a
    :func:`zero_width` mark, two for a wide (East Asian) character."""
    if text.isascii():  # nearly every line, on every receipt's hot path
        return len(text)
    return sum(_char_columns(char) for char in text)


def _cut(text: str, width: int) -> int:
    """The index after the first ``width`` columns of ``text`` (with their marks); at
    least one character, even one wider than ``width``."""
    seen = 0
    for i, char in enumerate(text):
        seen += _char_columns(char)
        if seen > width:
            return max(i, 1)
    return len(text)


def wrap(text: str, width: int = WIDTH) -> list[str]:
    """``text`` as lines of at most ``width`` columns, broken after the last space that
    fits (the space itself becomes the line break), or inside a word longer than a line.
    Every other character is kept, in order."""
    lines: list[str] = []
    while columns(text) > width:
        cut = _cut(text, width)
        space = text.rfind(" ", 0, cut + 1)
        if space > 0 and text[:space].strip():
            lines.append(text[:space])
            text = text[space + 1 :]
        else:  # no space to break at (or only the indentation): break inside the word
            lines.append(text[:cut])
            text = text[cut:]
    return [*lines, text]


def _put(out: list[str], left: str, right: str) -> None:
    """Append ``left`` with ``right`` flush right beside its last line to ``out``; a left
    part too long for one line is wrapped, and when its last line leaves no room,
    ``right`` gets a line of its own."""
    gap = WIDTH - len(right) - columns(left)  # at least one space between the two
    if gap > 0:
        out.append(left + " " * gap + right)
        return
    lines = wrap(left)
    gap = WIDTH - len(right) - columns(lines[-1])
    if gap <= 0:
        lines.append("")
        gap = max(WIDTH - len(right), 1)
    lines[-1] += " " * gap + right
    out += lines


def _quantity_line(qty: str, price: str, total: int) -> str | None:
    """An item's quantity times its unit price, ``None`` for one piece. The quantity is
    negated when ``total`` has the other sign than quantity times price, as on a Storno
    (the voided line, its total negated), so that the paper's quantity times price is the
    printed total."""
    # most items are one piece, of a price with the total's sign: no numbers needed
    if qty == "1" and (total >= 0) != price.startswith("-"):
        return None
    quantity = scaled(qty, 3)  # thousandths
    cents = scaled(price, 2)
    product = quantity * cents
    if total and product and (total < 0) != (product < 0):
        quantity = -quantity
    if quantity == 1000:
        return None
    return f"  {_quantity(quantity, len(qty.partition('.')[2]))} x {cents_to_amount(cents)}"


def _quantity(thousandths: int, decimals: int) -> str:
    """A quantity in the Austrian form: decimal comma, no leading zeros, the ``decimals``
    the POS sent (a scale's "0.250" stays "0,250")."""
    if not decimals:  # whole pieces
        return str(thousandths // 1000)
    sign = "-" if thousandths < 0 else ""
    whole, frac = divmod(abs(thousandths), 1000)
    return f"{sign}{whole}" + f",{frac:03d}"[: decimals + 1]


def _item_lines(facts: TextFacts) -> list[str]:
    """Each item: its quantity line (unless one piece), then its text with the amount;
    quantity and price as numbers ("0012.50" prints as 12,50), not as the POS spelled them
    (the signed amounts are the totals, which these do not change)."""
    out: list[str] = []
    for text, qty, price, vat, total in facts.lines:
        quantity = _quantity_line(qty, price, total)
        if quantity is not None:
            out.append(quantity)
        _put(out, text, cents_to_amount(total) + _VAT_LETTER[vat])
    return out


def vat_split(gross: int, rate: int) -> tuple[int, int]:
    """Net and tax of ``gross`` cents at ``rate`` percent: the tax is
    gross * rate / (100 + rate), rounded half up to the cent (away from zero for a
    negative gross, so a Storno mirrors its receipt), and net is the rest."""
    magnitude = (2 * abs(gross) * rate + 100 + rate) // (200 + 2 * rate)
    tax = -magnitude if gross < 0 else magnitude
    return gross - tax, tax


def _rate_lines(amounts: Amounts) -> list[str]:
    """Per VAT class with an amount, in the order A to E: its gross amount (§ 132a Abs 3
    BAO) and, where the rate is one, the net amount and the tax. A table while the amounts
    fit its columns; otherwise each amount on a line of its own."""
    rows = [
        (label, gross, None if rate is None else vat_split(gross, rate))
        for (label, rate), gross in zip(_VAT_RATES, amounts, strict=True)
        if gross
    ]
    if not rows:
        return []
    # net and tax lie between 0 and the gross: where the grosses fit a column, all do
    if min(amounts) in _TABLE_AMOUNTS and max(amounts) in _TABLE_AMOUNTS:
        out = [_RATE_HEAD]
        for label, gross, split in rows:
            net, tax = ("", "") if split is None else map(cents_to_amount, split)
            out.append(_RATE_ROW % (label, net, tax, cents_to_amount(gross)))
        return out
    out = []
    for label, gross, split in rows:
        _put(out, f"{label} Brutto", cents_to_amount(gross))
        if split is not None:
            _put(out, "    Netto", cents_to_amount(split[0]))
            _put(out, "    Steuer", cents_to_amount(split[1]))
    return out


def _head(facts: TextFacts) -> list[str]:
    out = [f"Kasse {facts.register_id}", f"Beleg {facts.receipt_id}"]
    out.append(facts.issued_at.replace("T", " "))
    if facts.cashier:
        out.append(f"Bediener: {facts.cashier}")
    if facts.kind in _TITLES:
        out.append(f"*** {_TITLES[facts.kind]} ***")
    if facts.period is not None:  # a caught-up month is dated after it: say which it is
        year, _, month = facts.period.partition("-")
        out.append(f"Jahr {year}" if facts.kind == "yearly" else f"Monat {year}-{month}")
    if facts.voids_receipt_id is not None:
        out.append(f"Storno zu Beleg {facts.voids_receipt_id}")
    if facts.replaces_receipt_id is not None:
        out.append(f"Ersatz für unsignierten Beleg {facts.replaces_receipt_id}")
    if max(map(len, out)) <= WIDTH and "".join(out).isascii():  # nearly always: as it is
        return out
    return [part for line in out for part in wrap(line)]


def render_lines(facts: TextFacts) -> list[str]:
    """The receipt as lines of at most 42 columns (80 mm paper, font A), every text whole."""
    out = _head(facts)
    out.append("-" * WIDTH)
    out.extend(_item_lines(facts))
    out.append("-" * WIDTH)
    _put(out, "SUMME EUR", cents_to_amount(sum(facts.amounts)))
    for method, amount in facts.payments:
        _put(out, f"  {method}", cents_to_amount(amount))
    out += _rate_lines(facts.amounts)
    if facts.signature_state in MARKED_STATES:
        out.append(FALLBACK_TEXT)
    if facts.signature_state == "unsigned":
        out.append(UNSIGNED_NOTICE)
    return out


def resolution_notice(
    resolution: str, replaced_by: str | None = None, voided_by: str | None = None
) -> list[str]:
    """What became of an unsigned receipt, for its copies and views (in place of
    :data:`UNSIGNED_NOTICE`): ``resolution`` as its views name it (``adopted``,
    ``superseded``, ``kept``), with the Belegnummer of the receipt that replaces it and
    of the Storno that voids it, where there are."""
    if resolution == "adopted":  # the chain service had signed it
        parts = ["vom Signaturdienst signiert"]
    elif resolution == "kept":  # a zero receipt stands with the failure marker
        parts = ["bleibt ohne Signatur"]
    else:
        parts = [f"ersetzt durch Beleg {replaced_by}"] if replaced_by is not None else []
        parts += [f"storniert durch Beleg {voided_by}"] if voided_by is not None else []
    parts = parts or ["bleibt ohne Signatur"]  # superseded by nothing: it stands
    parts[0] = f"Geklärt: {parts[0]}"
    return [line for part in parts for line in wrap(part)]


def with_notice(lines: Sequence[str], notice: Sequence[str]) -> list[str]:
    """A stored unsigned receipt's ``lines`` with ``notice`` in place of the notice they
    end with (this version's or an earlier one's); appended to a text that has none, after
    the failure marker's words, which texts stored before they were printed lack."""
    stored = list(lines)
    for ending in ((UNSIGNED_NOTICE,), *_OLD_NOTICES):
        if tuple(stored[-len(ending) :]) == ending:
            del stored[-len(ending) :]
            break
    if FALLBACK_TEXT not in stored:
        stored.append(FALLBACK_TEXT)
    return [*stored, *notice]

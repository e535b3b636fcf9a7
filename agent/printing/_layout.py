"""What a printed receipt shows, as blocks both renderers draw: ESC/POS and the PNG preview.

The text lines come from the receipt (:mod:`agent.receipt_text`); this module adds only
what depends on the print job (the configured header with the business's name, the copy
marking) or guards what must never be missing
(the labels of Storno and Training receipts, "Sicherheitseinrichtung ausgefallen" on every
receipt whose code carries the failure marker, the notice of an unsigned one), and keeps
the amounts flush right in the printer's characters (:func:`on_paper`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from agent.at_rksv import FALLBACK_TEXT
from agent.contract import ReceiptResult
from agent.receipt_text import (
    MARKED_STATES,
    UNSIGNED_NOTICE,
    WIDTH,
    columns,
    headings,
    with_notice,
    wrap,
    zero_width,
)

__all__ = ["COPY_NOTICE", "Block", "Qr", "Text", "layout", "on_paper", "printable"]

COPY_NOTICE = "Kopie - kein Originalbeleg"
# the amount a line of the receipt text ends with, flush right: an item's (with its VAT
# letter), the sum's, a payment's, a rate's
_AMOUNT = re.compile(r" -?[0-9]+,[0-9]{2}(?: [A-E])?$")
# the label a receipt of this kind must show (RKSV: Storno and Training visibly labelled)
_KIND_LABELS = {"storno": "STORNOBUCHUNG", "training": "TRAININGSBUCHUNG"}

# typographic characters a POS may send, mapped one to one onto CP858 look-alikes;
# control characters become "?" so no text can smuggle an ESC/POS command in
_TYPOGRAPHY = str.maketrans(
    {"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'", "\u201a": ","}
    | {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2026": "."}
    | {chr(c): "?" for c in (*range(0x20), 0x7F)}
)
# letters with a stroke (and the dotless i, U+0131), which Unicode does not decompose
_BASE_LETTERS = {
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ħ": "h",
    "Ħ": "H",
    "\u0131": "i",
    "ŧ": "t",
}


@dataclass(frozen=True, slots=True)
class Text:
    """One line of text (at most 42 columns, 21 when ``big``)."""

    text: str
    bold: bool = False
    big: bool = False  # double width and double height
    center: bool = False


@dataclass(frozen=True, slots=True)
class Qr:
    """The machine-readable code, centred."""

    content: str


Block = Text | Qr


def printable(text: str) -> str:
    """``text`` as the printer prints it: CP858 only, one character per column.

    A letter outside CP858 prints as its base letter (č, ő as c, o; ł as l), an accent
    sent apart from its letter is joined to it (e + U+0301 as é) or left out, and anything
    else (an emoji, CJK) prints as ``?``.
    """
    composed = unicodedata.normalize("NFC", text.translate(_TYPOGRAPHY))
    return "".join(_fallback(char) for char in composed)


@functools.lru_cache(maxsize=4096)
def _fallback(char: str) -> str:
    if _in_cp858(char):
        return char
    if zero_width(char):
        return ""  # a mark no CP858 letter carries (or a variation selector): the letter alone
    base = _BASE_LETTERS.get(char) or "".join(
        c for c in unicodedata.normalize("NFKD", char) if not zero_width(c)
    )
    printable_base = len(base) == 1 and _in_cp858(base) and unicodedata.category(base) != "Cc"
    return base if printable_base else "?"


def on_paper(line: str) -> str:
    """A line of the receipt text as printed: :func:`printable`, with its amount flush
    right still. The text is laid out by the columns its characters take on a screen; a
    wide character (CJK, an emoji) takes two there and prints as one ``?``, so a line that
    fills the paper with an amount at its end gets the columns it lost back before the
    amount."""
    text = printable(line)
    lost = columns(line) - len(text)
    if lost <= 0 or columns(line) != WIDTH:
        return text
    amount = _AMOUNT.search(text)
    if amount is None:  # a text's line, left-aligned: nothing moves
        return text
    return f"{text[: amount.start()]}{' ' * lost}{text[amount.start() :]}"


def _in_cp858(char: str) -> bool:
    try:
        char.encode("cp858")
    except UnicodeEncodeError:
        return False
    return True


def _guards(receipt: ReceiptResult, lines: Sequence[str]) -> list[Text]:
    """Notices the text ``lines`` lack but this receipt must show."""
    text = "\n".join(lines)
    out: list[Text] = []
    label = _KIND_LABELS.get(receipt.kind)
    if label is not None and label not in text:
        out.append(Text(f"*** {label} ***", bold=True))
    # an unsigned receipt carries the marker as a fallback one does; stored texts of
    # unsigned receipts from before it was printed lack it
    if receipt.signature_state in MARKED_STATES and FALLBACK_TEXT not in lines:
        out.append(Text(FALLBACK_TEXT, bold=True))
    return out


def _lines(receipt: ReceiptResult) -> list[str]:
    """The receipt's text lines; an unsigned one not yet remedied ends with this version's
    notice (a text stored earlier may promise a re-signing, or say nothing). A remedied
    one's lines say what happened already (:mod:`agent.receipt_view`)."""
    if receipt.signature_state != "unsigned" or receipt.resolution is not None:
        return receipt.lines
    return with_notice(receipt.lines, [UNSIGNED_NOTICE])


def layout(
    receipt: ReceiptResult, *, copy: bool = False, header: Sequence[str] = ()
) -> list[Block]:
    """The blocks of one print job of ``receipt``, top to bottom.

    ``header`` (``[printer] header``: the business's name and address) comes first,
    centred, on the original and on every copy; the stored receipt does not carry it.
    """
    blocks: list[Block] = []
    if header:
        for line in header:  # at most 42 columns, but a long line wraps rather than run off
            blocks += [Text(part, center=True) for part in wrap(printable(line), WIDTH)]
        blocks.append(Text(""))
    if copy:
        blocks += [Text("KOPIE", bold=True, big=True, center=True), Text(COPY_NOTICE, center=True)]
        blocks.append(Text(""))
    bold = headings(receipt.kind, receipt.signature_state)
    lines = _lines(receipt)
    for line in lines:  # wrapped: a receipt stored before lines were kept narrow
        blocks += [Text(part, bold=line in bold) for part in wrap(on_paper(line), WIDTH)]
    blocks += _guards(receipt, lines)
    if receipt.qr:
        blocks += [Text(""), Qr(receipt.qr)]
    if copy:
        blocks.append(Text(COPY_NOTICE, bold=True, center=True))
    return blocks

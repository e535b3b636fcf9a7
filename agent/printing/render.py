"""Receipt to ESC/POS bytes: a pure function, so the bytes can be stored and reprinted.

Every call draws on a fresh python-escpos ``Dummy``: the library keeps code-page state
per object that ``ESC @`` does not reset (libraries.md A1). The job is::

    ESC @                      initialise (the printer forgets any earlier job's state)
    ESC t n                    code table n = PC858 (Epson numbering: 19), sent explicitly
    ESC a 1, header ..., ESC a 0   the configured header (business name), centred
    text ... LF                CP858 bytes only: umlauts 0x84 0x94 0x81 0xE1, euro 0xD5;
                               other letters as their base letter (č as c), the rest "?"
    ESC a 1, GS ( k ..., ESC a 0   the QR code, centred (native) or GS v 0 (raster image)
    ESC d 6, GS V 0            feed past the cutter and cut
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract import ReceiptResult
from agent.printing._escpos import escpos_module
from agent.printing._layout import Qr, Text, layout

__all__ = ["CP858_TABLE", "EscposOptions", "render_escpos"]

CP858_TABLE = 19  # Epson's number for PC858; other vendors differ: check the self-test page
_QR_EC_M = 1  # escpos.constants.QR_ECLEVEL_M: 15% recovery survives a scuffed receipt
# a profile that knows its paper width: with the default one, every raster image makes
# escpos print a warning to stdout (python-escpos #446); 512 dots fit 80 mm printers
_PROFILE = "TM-T88V"


class EscposOptions(BaseModel):
    """How this printer model wants its bytes (the printer section of the configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code_table: int = Field(CP858_TABLE, ge=0, le=255)
    """The ``ESC t`` number of PC858 (euro sign) in this printer's code-table list."""
    qr: Literal["native", "image"] = "native"
    """``native`` sends the text (``GS ( k``); ``image`` a raster for printers without it."""
    qr_size: int = Field(4, ge=2, le=6)
    """Dots per QR module: 4 gives about 37 mm on a 203 dpi printer."""


def _dummy(options: EscposOptions) -> Any:
    # an encoder that knows only CP858 under the configured number: MagicEncode can never
    # switch code pages behind our back (A1: it picked ISO-8859-7 for the euro sign)
    encoder = escpos_module("magicencode").Encoder({"CP858": options.code_table})
    dummy = escpos_module("printer").Dummy(profile=_PROFILE, magic_encode_args={"encoder": encoder})
    dummy.hw("INIT")
    dummy.charcode("CP858")  # sends ESC t n now; INIT reset the printer to its default page
    return dummy


def _text(printer: Any, block: Text) -> None:
    if block.center:
        printer.set(align="center")
    if block.big:
        printer.set(double_width=True, double_height=True)
    if block.bold:
        printer.set(bold=True)
    printer.textln(block.text)
    if block.bold:
        printer.set(bold=False)
    if block.big:
        printer.set(normal_textsize=True)
    if block.center:
        printer.set(align="left")


def _qr(printer: Any, block: Qr, options: EscposOptions) -> None:
    native = options.qr == "native"
    printer.set(align="center")  # native QR cannot centre itself, and images need no profile
    printer.qr(
        block.content,
        ec=_QR_EC_M,
        size=options.qr_size,
        native=native,
        image_arguments=None if native else {"center": False},
    )
    printer.set(align="left")


def render_escpos(
    receipt: ReceiptResult,
    *,
    copy: bool = False,
    options: EscposOptions | None = None,
    header: Sequence[str] = (),
) -> bytes:
    """The print job of ``receipt``: same receipt, options and header, same bytes.

    Args:
        receipt: the stored receipt (its text lines and QR code are printed).
        copy: mark the job as a copy ("KOPIE", for reprints), not an original.
        options: the printer model's code table and QR settings.
        header: the lines above the receipt, centred (``[printer] header``).
    """
    options = options or EscposOptions()
    printer = _dummy(options)
    for block in layout(receipt, copy=copy, header=header):
        if isinstance(block, Qr):
            _qr(printer, block, options)
        else:
            _text(printer, block)
    printer.cut()
    return bytes(printer.output)

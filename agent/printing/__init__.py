"""Printing: receipts to ESC/POS bytes and PNG previews, and transports to printers.

Rendering is pure (:func:`render_escpos`, :func:`render_png`): a stored receipt with the
same options always gives the same bytes, so a copy rendered again matches the original
(but for its KOPIE mark); a job keeps its bytes only until the printer has taken them
(:mod:`agent.printing.jobs`). Transports (:class:`Printer`) only deliver bytes and fail
with :class:`~agent.errors.PrinterError` within their timeout. python-escpos is imported
on first use, never at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.errors import PrinterError
from agent.printing.config import NullPrinter, open_printer
from agent.printing.render import CP858_TABLE, EscposOptions, render_escpos
from agent.printing.transport import (
    FilePrinter,
    NetworkPrinter,
    Printer,
    SerialPrinter,
    UsbPrinter,
)

__all__ = [
    "CP858_TABLE",
    "EscposOptions",
    "FilePrinter",
    "NetworkPrinter",
    "NullPrinter",
    "Printer",
    "PrinterError",
    "SerialPrinter",
    "UsbPrinter",
    "open_printer",
    "render_escpos",
    "render_png",
]

if TYPE_CHECKING:
    from agent.printing.preview import render_png


def __getattr__(name: str) -> Any:
    """``render_png`` loads Pillow and qrcode on first use: the configuration (which
    imports this package for the printer options) stays quick to load for every command."""
    if name == "render_png":
        from agent.printing.preview import render_png

        return render_png
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

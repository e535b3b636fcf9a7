"""Printing: receipts to ESC/POS bytes and PNG previews, and transports to printers.

Rendering is pure (:func:`render_escpos`, :func:`render_png`): the bytes are stored with
the receipt so a reprint is byte-identical. Transports (:class:`Printer`) only deliver
bytes and fail with :class:`~agent.errors.PrinterError` within their timeout.
python-escpos is imported on first use, never at import time.
"""

from __future__ import annotations

from agent.errors import PrinterError
from agent.printing.config import NullPrinter, PrinterConfig, PrinterKind, open_printer
from agent.printing.preview import render_png
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
    "PrinterConfig",
    "PrinterError",
    "PrinterKind",
    "SerialPrinter",
    "UsbPrinter",
    "open_printer",
    "render_escpos",
    "render_png",
]

"""The transport that the ``[printer]`` section (:class:`agent.config.PrinterConfig`) names.

The section itself is part of the agent's configuration, with the printer model's
``[printer.escpos]`` options (:class:`~agent.printing.render.EscposOptions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.errors import ConfigurationError
from agent.printing.transport import (
    FilePrinter,
    NetworkPrinter,
    Printer,
    SerialPrinter,
    UsbPrinter,
)

if TYPE_CHECKING:  # agent.config imports this package for EscposOptions
    from agent.config import PrinterConfig

__all__ = ["NullPrinter", "open_printer"]


class NullPrinter:
    """No printer (kind ``none``): jobs are accepted and dropped."""

    name = "none"

    def send(self, data: bytes) -> None:
        """Drop the job."""

    def close(self) -> None:
        """Nothing to release."""


def open_printer(config: PrinterConfig) -> Printer:
    """The transport ``config`` describes; devices open on the first job.

    Raises:
        ConfigurationError: a field the kind needs is missing (the configuration loader
            reports that first), or the USB or serial extra is not installed.
    """
    match config.kind:
        case "network" if config.host is not None:
            return NetworkPrinter(config.host, config.port, timeout=config.timeout_s)
        case "usb" if config.usb_vendor is not None and config.usb_product is not None:
            return UsbPrinter(config.usb_vendor, config.usb_product, timeout=config.timeout_s)
        case "serial" if config.serial_device is not None:
            device = str(config.serial_device)
            return SerialPrinter(device, config.baudrate, timeout=config.timeout_s)
        case "file" if config.dir is not None:
            return FilePrinter(config.dir, keep_days=config.keep_days)
        case "none":
            return NullPrinter()
    raise ConfigurationError(f"printer: a {config.kind} printer lacks the fields it needs")

"""The printer section of the configuration, and the transport it describes.

::

    [printer]
    kind = "network"          # network | usb | serial | file | none
    host = "192.168.1.50"     # network: host, port (9100)
    timeout = 5.0             # network, usb, serial: seconds per connect or write
    # usb: vendor_id = 0x04B8, product_id = 0x0202    serial: device, baudrate (9600)
    # file: directory = "/var/lib/till-agent/print"
    [printer.escpos]
    code_table = 19           # ESC t number of PC858 on this model (see its self-test)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from agent.printing.render import EscposOptions
from agent.printing.transport import (
    FilePrinter,
    NetworkPrinter,
    Printer,
    SerialPrinter,
    UsbPrinter,
)

__all__ = ["NullPrinter", "PrinterConfig", "PrinterKind", "open_printer"]

PrinterKind = Literal["network", "usb", "serial", "file", "none"]
_FIELDS: dict[str, tuple[str, ...]] = {  # the fields of each kind; the first ones required
    "network": ("host", "port"),
    "usb": ("vendor_id", "product_id"),
    "serial": ("device", "baudrate"),
    "file": ("directory",),
    "none": (),
}
_REQUIRED = {"host", "vendor_id", "product_id", "device", "directory"}


class PrinterConfig(BaseModel):
    """Which printer receives the receipts, and how to talk to it.

    A field that the kind needs but lacks, or that belongs to another kind, is a
    validation error located at that field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PrinterKind
    host: str | None = Field(None, min_length=1, validate_default=True)
    port: int | None = Field(None, ge=1, le=65535, validate_default=True)
    vendor_id: int | None = Field(None, ge=0, le=0xFFFF, validate_default=True)
    product_id: int | None = Field(None, ge=0, le=0xFFFF, validate_default=True)
    device: str | None = Field(None, min_length=1, validate_default=True)
    baudrate: int | None = Field(None, ge=1200, le=921600, validate_default=True)
    directory: Path | None = Field(None, validate_default=True)
    timeout: float = Field(5.0, gt=0, le=120)
    escpos: EscposOptions = EscposOptions()

    @field_validator("vendor_id", "product_id", mode="before")
    @classmethod
    def _hex_id(cls, value: Any) -> Any:
        """USB ids are written in hex: "0x04b8" is accepted as well as 0x04B8 in TOML."""
        return int(value, 0) if isinstance(value, str) else value

    @field_validator("host", "port", "vendor_id", "product_id", "device", "baudrate", "directory")
    @classmethod
    def _belongs_to_kind(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind is None:  # the kind itself is invalid and reported
            return value
        needed = info.field_name in _FIELDS[kind]
        if value is None and needed and info.field_name in _REQUIRED:
            raise ValueError(f"required for a {kind} printer")
        if value is not None and not needed:
            raise ValueError(f"does not apply to a {kind} printer")
        return value


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
        ConfigurationError: the USB or serial extra is not installed.
    """
    match config.kind:
        case "network":
            assert config.host is not None
            return NetworkPrinter(config.host, config.port or 9100, timeout=config.timeout)
        case "usb":
            assert config.vendor_id is not None
            assert config.product_id is not None
            return UsbPrinter(config.vendor_id, config.product_id, timeout=config.timeout)
        case "serial":
            assert config.device is not None
            return SerialPrinter(config.device, config.baudrate or 9600, timeout=config.timeout)
        case "file":
            assert config.directory is not None
            return FilePrinter(config.directory)
        case _:
            return NullPrinter()

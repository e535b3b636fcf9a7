"""PrinterConfig: each kind's fields, errors located at the field, and the transport it opens."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.errors import ConfigurationError
from agent.printing import (
    EscposOptions,
    FilePrinter,
    NetworkPrinter,
    NullPrinter,
    PrinterConfig,
    open_printer,
)


def _error(**fields: Any) -> tuple[tuple[str | int, ...], str]:
    """The location and message of the single validation error of ``fields``."""
    with pytest.raises(ValidationError) as caught:
        PrinterConfig(**fields)
    [error] = caught.value.errors()
    return error["loc"], error["msg"]


class TestValidation:
    def test_a_network_printer_from_toml(self) -> None:
        """The documented TOML form, including the escpos options."""
        section = tomllib.loads(
            '[printer]\nkind = "network"\nhost = "192.168.1.50"\ntimeout = 2.5\n'
            "[printer.escpos]\ncode_table = 16\n"
        )["printer"]
        config = PrinterConfig.model_validate(section)
        assert (config.host, config.port, config.timeout) == ("192.168.1.50", None, 2.5)
        assert config.escpos == EscposOptions(code_table=16)

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"kind": "network"}, "host"),
            ({"kind": "usb", "vendor_id": 0x04B8}, "product_id"),
            ({"kind": "serial", "baudrate": 19200}, "device"),
            ({"kind": "file"}, "directory"),
        ],
    )
    def test_a_missing_field_is_named(self, fields: dict[str, Any], field: str) -> None:
        loc, message = _error(**fields)
        assert loc == (field,)
        assert f"required for a {fields['kind']} printer" in message

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"kind": "file", "directory": "/tmp/p", "host": "printer"}, "host"),
            ({"kind": "network", "host": "printer", "baudrate": 9600}, "baudrate"),
            ({"kind": "none", "port": 9100}, "port"),
        ],
    )
    def test_a_field_of_another_kind_is_named(self, fields: dict[str, Any], field: str) -> None:
        loc, message = _error(**fields)
        assert loc == (field,)
        assert f"does not apply to a {fields['kind']} printer" in message

    @pytest.mark.parametrize(
        ("fields", "loc"),
        [
            ({"kind": "network", "host": "p", "prot": 9100}, ("prot",)),
            ({"kind": "network", "host": "p", "port": 0}, ("port",)),
            ({"kind": "network", "host": "p", "timeout": 0}, ("timeout",)),
            (
                {"kind": "network", "host": "p", "escpos": {"code_table": 256}},
                ("escpos", "code_table"),
            ),
            ({"kind": "network", "host": "p", "escpos": {"qr": "svg"}}, ("escpos", "qr")),
            ({"kind": "usb", "vendor_id": "0x1_0000", "product_id": 1}, ("vendor_id",)),
            ({"kind": "lpt"}, ("kind",)),
        ],
    )
    def test_a_bad_value_or_unknown_field_is_located(
        self, fields: dict[str, Any], loc: tuple[str, ...]
    ) -> None:
        assert _error(**fields)[0] == loc

    def test_usb_ids_may_be_hex_strings(self) -> None:
        config = PrinterConfig(kind="usb", vendor_id="0x04b8", product_id="0x0E15")
        assert (config.vendor_id, config.product_id) == (0x04B8, 0x0E15)


class TestOpenPrinter:
    def test_network(self) -> None:
        printer = open_printer(PrinterConfig(kind="network", host="10.0.0.9", timeout=1.5))
        assert isinstance(printer, NetworkPrinter)
        assert (printer.host, printer.port, printer.timeout) == ("10.0.0.9", 9100, 1.5)

    def test_file(self, tmp_path: Path) -> None:
        printer = open_printer(PrinterConfig(kind="file", directory=tmp_path))
        assert isinstance(printer, FilePrinter)
        printer.send(b"\x1b@")
        assert (tmp_path / "000001.bin").read_bytes() == b"\x1b@"

    def test_none_drops_the_jobs(self) -> None:
        printer = open_printer(PrinterConfig(kind="none"))
        assert isinstance(printer, NullPrinter)
        printer.send(b"\x1b@")
        printer.close()

    @pytest.mark.skipif(importlib.util.find_spec("usb") is not None, reason="pyusb installed")
    def test_usb_without_the_extra_fails_when_opened(self) -> None:
        config = PrinterConfig(kind="usb", vendor_id=0x04B8, product_id=0x0202)
        with pytest.raises(ConfigurationError, match="till-agent"):
            open_printer(config)

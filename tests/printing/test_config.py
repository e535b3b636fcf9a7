"""The ``[printer]`` section: the printer model's options, USB ids, the transport it opens.

The section's keys and their errors in general are tested with the rest of the
configuration (tests/test_config.py); here what is particular to printers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import WriteConfig

from agent.config import PrinterConfig, load_config
from agent.errors import ConfigurationError
from agent.printing import (
    EscposOptions,
    FilePrinter,
    NetworkPrinter,
    NullPrinter,
    open_printer,
)

pytestmark = pytest.mark.usefixtures("no_system_config")


def _error(write_config: WriteConfig, text: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_config(write_config(text), env={})
    return str(caught.value)


class TestSection:
    def test_the_printer_model_from_toml(self, write_config: WriteConfig) -> None:
        """The documented form: a network printer and its model's ``[printer.escpos]``."""
        config = load_config(
            write_config(
                '[printer]\nkind = "network"\nhost = "192.168.1.50"\ntimeout_s = 2.5\n'
                '[printer.escpos]\ncode_table = 16\nqr = "image"\n'
            ),
            env={},
        )
        printer = config.printer
        assert (printer.host, printer.port, printer.timeout_s) == ("192.168.1.50", 9100, 2.5)
        assert printer.escpos == EscposOptions(code_table=16, qr="image")

    def test_without_escpos_the_epson_numbering_applies(self) -> None:
        assert PrinterConfig().escpos == EscposOptions()
        assert EscposOptions().code_table == 19  # PC858 in Epson's list

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ("[printer.escpos]\ncode_table = 256\n", "printer.escpos.code_table"),
            ('[printer.escpos]\nqr = "svg"\n', "printer.escpos.qr"),
            ("[printer.escpos]\nqr_size = 9\n", "printer.escpos.qr_size"),
            ("[printer.escpos]\ncodetable = 16\n", "printer.escpos.codetable"),
            ('[printer]\nkind = "serial"\n', "printer.serial_device"),
            ('[printer]\nkind = "usb"\nusb_vendor = "0x1_0000"\nusb_product = 1\n', "usb_vendor"),
            ('[printer]\nkind = "usb"\nusb_vendor = "eps"\nusb_product = 1\n', "usb_vendor"),
        ],
    )
    def test_a_bad_value_names_its_key_and_the_file(
        self, write_config: WriteConfig, text: str, key: str
    ) -> None:
        message = _error(write_config, text)
        assert key in message
        assert ".toml" in message

    def test_usb_ids_may_be_written_as_lsusb_prints_them(self, write_config: WriteConfig) -> None:
        """``04b8:0e15`` in lsusb: hex strings, with or without 0x, or TOML hex integers."""
        config = load_config(
            write_config('[printer]\nkind = "usb"\nusb_vendor = "04b8"\nusb_product = "0x0E15"\n'),
            env={},
        )
        assert (config.printer.usb_vendor, config.printer.usb_product) == (0x04B8, 0x0E15)


class TestOpenPrinter:
    def test_network(self) -> None:
        printer = open_printer(PrinterConfig(kind="network", host="10.0.0.9", timeout_s=1.5))
        assert isinstance(printer, NetworkPrinter)
        assert (printer.host, printer.port, printer.timeout) == ("10.0.0.9", 9100, 1.5)

    def test_file(self, tmp_path: Path) -> None:
        printer = open_printer(PrinterConfig(kind="file", dir=tmp_path))
        assert isinstance(printer, FilePrinter)
        printer.send(b"\x1b@")
        assert (tmp_path / "000001.bin").read_bytes() == b"\x1b@"

    def test_the_loaded_default_is_a_file_printer_in_the_data_directory(
        self, tmp_path: Path
    ) -> None:
        config = load_config(env={"TILL_AGENT_DATA_DIR": str(tmp_path)})
        printer = open_printer(config.printer)
        assert isinstance(printer, FilePrinter)
        printer.send(b"\x1b@")
        assert (tmp_path / "prints" / "000001.bin").read_bytes() == b"\x1b@"

    def test_none_drops_the_jobs(self) -> None:
        printer = open_printer(PrinterConfig(kind="none"))
        assert isinstance(printer, NullPrinter)
        printer.send(b"\x1b@")
        printer.close()

    def test_a_file_printer_without_a_directory_is_refused(self) -> None:
        """Only a section built outside the loader can lack the directory."""
        with pytest.raises(ConfigurationError, match="file printer"):
            open_printer(PrinterConfig(kind="file"))

    @pytest.mark.skipif(importlib.util.find_spec("usb") is not None, reason="pyusb installed")
    def test_usb_without_the_extra_fails_when_opened(self) -> None:
        config = PrinterConfig(kind="usb", usb_vendor=0x04B8, usb_product=0x0202)
        with pytest.raises(ConfigurationError, match="till-agent"):
            open_printer(config)

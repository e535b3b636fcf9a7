"""USB ids are hex as lsusb prints them (``ID 1504:0006``): from the environment every
value is read as hex text, also one of decimal digits only (Bixolon's 1504, which TOML
would read as the decimal 1504 = 0x05e0); in the file an integer keeps TOML's meaning
(``0x04B8``, and a bare ``1504`` is decimal, as the example says), text is hex."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"

pytestmark = pytest.mark.usefixtures("no_system_config")


def _usb_ids(tmp_path: Path, vendor: str, product: str) -> tuple[int | None, int | None]:
    env = {
        "TILL_AGENT_DATA_DIR": str(tmp_path),
        "TILL_AGENT_PRINTER__KIND": "usb",
        "TILL_AGENT_PRINTER__USB_VENDOR": vendor,
        "TILL_AGENT_PRINTER__USB_PRODUCT": product,
    }
    printer = load_config(None, env=env).printer
    return printer.usb_vendor, printer.usb_product


@pytest.mark.parametrize(
    ("vendor", "product", "expected"),
    [
        ("1504", "1234", (0x1504, 0x1234)),  # all decimal digits: were 0x05e0 and 0x04d2
        ("0x1504", "0X0006", (0x1504, 0x0006)),
        ("04b8", "0202", (0x04B8, 0x0202)),
        ("04B8", "0e15", (0x04B8, 0x0E15)),
        ("8", "10", (0x8, 0x10)),
    ],
)
def test_an_environment_usb_id_is_always_hex(
    tmp_path: Path, vendor: str, product: str, expected: tuple[int, int]
) -> None:
    assert _usb_ids(tmp_path, vendor, product) == expected


@pytest.mark.parametrize("bad", ["zz", "true", "", "0x", "12345", "1_504", "15.04"])
def test_an_environment_usb_id_that_is_not_hex_is_refused_naming_it(
    tmp_path: Path, bad: str
) -> None:
    """Named by key, rule and variable; no TOML reading in between (``true`` is not a
    boolean here, ``1_504`` not TOML's 1504)."""
    with pytest.raises(ConfigurationError) as refused:
        _usb_ids(tmp_path, bad, "0202")
    message = str(refused.value)
    assert message.startswith("printer.usb_vendor: a USB id is 1-4 hex digits as lsusb prints it")
    assert message.endswith("[hex-id] (from TILL_AGENT_PRINTER__USB_VENDOR)")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("0x04B8", 0x04B8),  # a TOML integer stays an integer
        ("1504", 1504),  # TOML's decimal: 0x05e0, as the example warns
        ('"1504"', 0x1504),  # text is hex, as lsusb prints it
        ('"0x1504"', 0x1504),
    ],
)
def test_in_the_file_an_integer_keeps_its_toml_meaning(
    tmp_path: Path, written: str, expected: int
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[printer]\nkind = "usb"\nusb_vendor = {written}\nusb_product = 0x0202\n',
        encoding="utf-8",
    )
    printer = load_config(config, env={"TILL_AGENT_DATA_DIR": str(tmp_path)}).printer
    assert (printer.usb_vendor, printer.usb_product) == (expected, 0x0202)


def test_the_example_says_how_to_write_them() -> None:
    """The example's printer section tells the decimal pitfall of the file."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "usb_vendor = 1504 is 0x05e0, not 0x1504" in text
    assert "write 0x04b8" in text

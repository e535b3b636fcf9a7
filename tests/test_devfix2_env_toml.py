"""Environment values that can only be TOML: the example's ``TILL_AGENT_UNITS`` parses,
one that does not is refused naming the variable and TOML's error, and one key of one
``[[units]]`` entry is refused with a message of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "config.example.toml"

pytestmark = pytest.mark.usefixtures("no_system_config")


def _example_units_value() -> str:
    """The value of ``TILL_AGENT_UNITS`` as the example's comment shows it."""
    text = EXAMPLE.read_text(encoding="utf-8")
    [value] = re.findall(r"^#\s+TILL_AGENT_UNITS='(.*)'$", text, re.MULTILINE)
    return value


def _refusal(tmp_path: Path, **env: str) -> str:
    with pytest.raises(ConfigurationError) as refused:
        load_config(None, env={"TILL_AGENT_DATA_DIR": str(tmp_path), **env})
    return str(refused.value)


def test_the_examples_value_is_valid_toml_and_a_valid_unit(tmp_path: Path) -> None:
    """Copied as the example shows it (one line), it replaces the file's units."""
    env = {"TILL_AGENT_DATA_DIR": str(tmp_path), "TILL_AGENT_UNITS": _example_units_value()}
    [unit] = load_config(EXAMPLE, env=env).units
    assert (unit.id, unit.kind, unit.pin, unit.key_label) == ("hsm", "pkcs11", "1234", "rksv")


def test_the_two_line_form_is_refused_naming_the_variable_and_the_place(tmp_path: Path) -> None:
    """The form the example once showed (an inline table over two lines): TOML's own error
    with its line and column in the value, and how to write it."""
    value = (
        '[{id = "hsm", kind = "pkcs11", zda = "AT1", module = "...", token_label = "till",\n'
        '   key_label = "rksv", pin = "1234", certificate_file = "..."}]'
    )
    message = _refusal(tmp_path, TILL_AGENT_UNITS=value)
    column = value.index("\n") + 1  # the line break ends the inline table's first line
    assert message.startswith("TILL_AGENT_UNITS: not a valid TOML value: ")
    assert f"(at line 1, column {column})" in message
    assert "must be on one line" in message
    assert "valid tuple" not in message


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("TILL_AGENT_UNITS", '[{id = "hsm"', "Unclosed inline table (at end of document)"),
        ("TILL_AGENT_UNITS", '[{id = "hsm", ..., pin = "1"}]', "(at line 1, column 15)"),
        ("TILL_AGENT_PRINTER__HEADER", '["Gasthaus', "(at end of document)"),
        ("TILL_AGENT_API__PORT", '"80', "(at end of document)"),
    ],
    ids=["unclosed", "placeholder", "header", "quoted-port"],
)
def test_a_value_that_can_only_be_toml_must_parse(
    tmp_path: Path, name: str, value: str, error: str
) -> None:
    message = _refusal(tmp_path, **{name: value})
    assert message.startswith(f"{name}: not a valid TOML value: ")
    assert error in message
    assert message.endswith("[toml]")


def test_a_bare_word_is_still_the_fields_to_read(tmp_path: Path) -> None:
    """A plain word TOML does not take stays text for the field: a printer kind, a USB id
    as lsusb prints it."""
    env = {
        "TILL_AGENT_DATA_DIR": str(tmp_path),
        "TILL_AGENT_PRINTER__KIND": "usb",
        "TILL_AGENT_PRINTER__USB_VENDOR": "04b8",
        "TILL_AGENT_PRINTER__USB_PRODUCT": "0x0202",
    }
    printer = load_config(None, env=env).printer
    assert (printer.kind, printer.usb_vendor) == ("usb", 0x04B8)


def test_one_key_of_one_unit_says_to_set_the_whole_list(tmp_path: Path) -> None:
    message = _refusal(tmp_path, TILL_AGENT_UNITS__0__PIN="1")
    assert message.startswith("TILL_AGENT_UNITS__0__PIN: [[units]] is a list")
    assert "set the whole list in TILL_AGENT_UNITS" in message
    assert "valid tuple" not in message


@pytest.mark.parametrize(
    ("text", "expected"), [("0e15", 0x0E15), ("1e10", 0x1E10), ("0202", 0x0202)]
)
def test_a_usb_id_that_toml_reads_as_a_float_is_read_as_hex(
    tmp_path: Path, text: str, expected: int
) -> None:
    """An Epson TM-T20's product id 0e15 is TOML's float 0.0; it was silently 0."""
    env = {
        "TILL_AGENT_DATA_DIR": str(tmp_path),
        "TILL_AGENT_PRINTER__KIND": "usb",
        "TILL_AGENT_PRINTER__USB_VENDOR": "04b8",
        "TILL_AGENT_PRINTER__USB_PRODUCT": text,
    }
    printer = load_config(None, env=env).printer
    assert (printer.usb_vendor, printer.usb_product) == (0x04B8, expected)

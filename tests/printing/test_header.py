"""``[printer] header``: the business's name on every printed receipt (§ 132a Abs 3 BAO).

The header is a printing concern: ESC/POS jobs, copies and PNG previews carry it, the
stored receipt and its JSON do not.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import WriteConfig
from PIL import Image
from printing.conftest import FakePrinter
from typer.testing import CliRunner

from agent.cli import app
from agent.cli_print import configured_header
from agent.config import MISSING_HEADER, PrinterConfig, load_config
from agent.contract import ReceiptResult
from agent.errors import ConfigurationError
from agent.print_worker import PrintWorker
from agent.printing import NetworkPrinter, render_escpos, render_png
from agent.receipts import ReceiptService
from factories import qr_codes, sale

REGISTER = "KASSE-1"
HEADER = ("Gasthaus Zur Post", "Hauptstraße 1, 1010 Wien", "UID ATU12345678")
CENTER, LEFT = b"\x1ba\x01", b"\x1ba\x00"


def _centred(line: bytes) -> bytes:
    return CENTER + line + b"\n" + LEFT


class TestConfiguration:
    pytestmark = pytest.mark.usefixtures("no_system_config")

    def test_from_toml(self, write_config: WriteConfig) -> None:
        path = write_config('[printer]\nheader = ["Gasthaus Zur Post", "UID ATU12345678"]\n')
        printer = load_config(path, env={}).printer
        assert printer.header == ("Gasthaus Zur Post", "UID ATU12345678")
        assert printer.header_warning is None

    def test_from_the_environment_like_other_lists(self, write_config: WriteConfig) -> None:
        path = write_config('[printer]\nheader = ["Alter Name"]\n')
        env = {"TILL_AGENT_PRINTER__HEADER": '["Gasthaus Zur Post", "Hauptstraße 1"]'}
        assert load_config(path, env=env).printer.header == ("Gasthaus Zur Post", "Hauptstraße 1")

    @pytest.mark.parametrize(
        ("value", "rule"),
        [
            ('"Gasthaus Zur Post"', "header-list"),
            ("[" + ", ".join(['"x"'] * 7) + "]", "header-lines"),
            (f'["{"x" * 43}"]', "header-line"),
            ('[""]', "header-line"),
            ('["   "]', "header-line"),
            ('["Gasthaus\\tZur Post"]', "header-line"),
            ('["Gasthaus\\u202eZur Post"]', "header-line"),
            ("[1]", "string_type"),
        ],
    )
    def test_a_bad_header_names_the_key_rule_and_file(
        self, write_config: WriteConfig, value: str, rule: str
    ) -> None:
        path = write_config(f"[printer]\nheader = {value}\n")
        with pytest.raises(ConfigurationError) as caught:
            load_config(path, env={})
        message = str(caught.value)
        assert message.startswith("printer.header")
        assert f"[{rule}]" in message
        assert f"(from {path})" in message

    def test_a_bad_header_from_the_environment_names_the_variable(self) -> None:
        with pytest.raises(ConfigurationError, match=r"\[header-list\] \(from TILL_AGENT_PRINTER"):
            load_config(env={"TILL_AGENT_PRINTER__HEADER": "Gasthaus Zur Post"})

    def test_six_lines_of_42_are_the_most(self) -> None:
        header = tuple("x" * 42 for _ in range(6))
        assert PrinterConfig(header=header).header == header

    def test_no_header_warns_unless_nothing_is_printed(self) -> None:
        assert PrinterConfig().header_warning == MISSING_HEADER
        assert "132a" in MISSING_HEADER
        assert PrinterConfig(kind="none").header_warning is None

    def test_the_example_has_one(self) -> None:
        example = Path(__file__).parents[2] / "docs" / "config.example.toml"
        assert load_config(example, env={}).printer.header == HEADER


class TestRendering:
    def test_escpos_prints_it_centred_before_the_receipt(self, standard: ReceiptResult) -> None:
        job = render_escpos(standard, header=HEADER)
        first = job.index(_centred(b"Gasthaus Zur Post"))
        assert job.index(_centred(b"Hauptstra\xe1e 1, 1010 Wien")) > first  # ß in CP858
        assert job.index(_centred(b"UID ATU12345678")) < job.index(standard.lines[0].encode())
        assert job.index(b"\x1bt\x13") < first  # after the code page is chosen
        assert job.replace(b"".join(_centred(h.encode("cp858")) for h in HEADER) + b"\n", b"") == (
            render_escpos(standard)
        )

    def test_a_copy_carries_it_too(self, standard: ReceiptResult) -> None:
        job = render_escpos(standard, copy=True, header=HEADER)
        assert job.index(_centred(b"Gasthaus Zur Post")) < job.index(b"KOPIE")

    def test_letters_outside_the_code_page_fall_back(self, standard: ReceiptResult) -> None:
        job = render_escpos(standard, header=("Dvořák Łódź ☕",))
        assert _centred("Dvorák Lódz ?".encode("cp858")) in job  # ř, Ł, ź, ☕ fall back

    def test_the_preview_shows_it_centred_above_the_receipt(self, standard: ReceiptResult) -> None:
        plain, headed = render_png(standard), render_png(standard, header=("Gasthaus Zur Post",))
        with Image.open(io.BytesIO(plain)) as a, Image.open(io.BytesIO(headed)) as b:
            assert b.height == a.height + 2 * 20  # the line and a blank one
            line = b.crop((0, 20, b.width, 40)).point(lambda v: 255 if v > 128 else 0)
            left, _, right, _ = Image.eval(line, lambda v: 255 - v).getbbox() or (0, 0, 0, 0)
            assert abs(left - (b.width - right)) <= 10  # centred (to a character cell)
            assert (
                b.crop((0, 60, b.width, b.height)).tobytes()
                == a.crop((0, 20, a.width, a.height)).tobytes()
            )
        assert qr_codes(headed) == [standard.qr]


class TestWorker:
    def test_every_job_and_copy_over_the_network_starts_with_it(
        self, service: ReceiptService, fake_printer: FakePrinter
    ) -> None:
        printer = NetworkPrinter("127.0.0.1", fake_printer.port, timeout=2.0)
        worker = PrintWorker(service, printer, header=HEADER)
        result = service.issue(sale(request_id="headed"))
        assert worker.run_once() == 1
        worker.reprint(REGISTER, result.number)
        assert worker.run_once() == 1
        original, copy = fake_printer.wait_for(2)
        assert original == render_escpos(result, header=HEADER)
        assert copy == render_escpos(result, copy=True, header=HEADER)
        # the stored receipt and its JSON stay the POS's: no header there
        stored = service.get(REGISTER, result.number)
        assert stored.lines == result.lines
        assert "Gasthaus" not in json.dumps(stored.model_dump(mode="json"))


def test_reprint_from_the_command_line_and_the_preview_header(
    tmp_path: Path, fake_printer: FakePrinter, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    runner = CliRunner()
    for args in (
        ["unit", "create-software", "--id", "dev", "--data-dir", str(data)],
        ["init", REGISTER, "--unit", "dev", "--data-dir", str(data)],
    ):
        assert runner.invoke(app, args).exit_code == 0
    config = tmp_path / "till.toml"
    config.write_text(
        f'data_dir = "{data}"\n[printer]\nkind = "network"\nhost = "127.0.0.1"\n'
        f'port = {fake_printer.port}\nheader = ["Gasthaus Zur Post"]\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["reprint", REGISTER, "1", "--config", str(config), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [job] = fake_printer.wait_for(1)
    assert job.index(_centred(b"Gasthaus Zur Post")) < job.index(b"KOPIE")
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(config))
    assert configured_header() == ("Gasthaus Zur Post",)
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(tmp_path / "missing.toml"))
    assert configured_header() == ()


def test_the_png_of_receipts_show_carries_the_configured_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`receipts show --png` draws what the printer prints: the header included."""
    from agent.printing import render_png
    from agent.receipt_view import result_from_row

    data = tmp_path / "data"
    runner = CliRunner()
    for args in (
        ["unit", "create-software", "--id", "dev", "--data-dir", str(data)],
        ["init", REGISTER, "--unit", "dev", "--data-dir", str(data)],
    ):
        assert runner.invoke(app, args).exit_code == 0
    config = tmp_path / "till.toml"
    config.write_text('[printer]\nheader = ["Gasthaus Zur Post"]\n', encoding="utf-8")
    monkeypatch.setenv("TILL_AGENT_CONFIG", str(config))
    png = tmp_path / "r.png"
    args = ["receipts", "show", REGISTER, "1", "--png", str(png), "--data-dir", str(data)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    conn = sqlite3.connect(data / "till.sqlite3")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM receipts WHERE number = 1").fetchone()
    conn.close()
    receipt = result_from_row(dict(row))
    assert png.read_bytes() == render_png(receipt, header=("Gasthaus Zur Post",))
    assert png.read_bytes() != render_png(receipt)

"""The ``till-agent`` command line: help, units, registers, receipts, export, verification,
simulation, benchmarks, the data directory lock and the documented exit codes."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import Result

from agent import __version__
from agent.at_rksv import aes_key_check_value, split_jws
from agent.cli import app, unwrap_help
from agent.cli_commands import _owed_for
from agent.receipts import ReceiptService
from factories import VECTORS, Run, cli_run, expect, flat, load_json, sale, to_closing_day
from storage import TillDB

REGISTER = "KASSE-1"
UNIT = "dev"
CLOSED_KEY_ID = "U:ATU12345678-K1"
SCENARIO = VECTORS / "official" / "TESTSUITE_TEST_SZENARIO_1.json"

ROOT_COMMANDS = [
    "unit",
    "init",
    "issue",
    "special",
    "receipts",
    "export",
    "verify",
    "simulate",
    "bench",
    "outage",
    "checks",
    "config",
    "backup",
    "run",
    "demo",
    "reprint",
]
GROUPS = {
    "unit": ["create-software", "add-pkcs11", "list", "switch"],
    "receipts": ["list", "show"],
    "export": ["dep", "crypto-container"],
    "simulate": ["scenario", "unit"],
    "bench": ["receipts", "outage", "ingest"],
    "outage": ["list", "show", "export", "report"],
    "checks": ["list", "done"],
    "config": ["check", "show"],
    "backup": ["list", "run"],
}
LEAVES = [
    ["init"],
    ["issue"],
    ["special"],
    ["verify"],
    *([group, command] for group, commands in GROUPS.items() for command in commands),
]


def _json(result: Result) -> Any:
    return json.loads(result.stdout)


def _jws_list(dep_file: Path) -> list[str]:
    dep = load_json(dep_file)
    return [jws for group in dep["Belege-Gruppe"] for jws in group["Belege-kompakt"]]


@pytest.fixture(name="no_env_data_dir", autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command gets its data directory from --data-dir, never from the environment."""
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)


@pytest.fixture(name="run")
def _run() -> Run:
    """Invoke the Typer app in-process: ``run(*args, input=...)``."""
    return cli_run()


@pytest.fixture(name="run_in")
def _run_in(run: Run, data_dir: Path) -> Run:
    """Like ``run`` with ``--data-dir`` of the test appended."""

    def run_in(*args: str | Path, input: str | bytes | None = None) -> Result:
        return run(*args, "--data-dir", data_dir, input=input)

    return run_in


@pytest.fixture(name="with_unit")
def _with_unit(run_in: Run, data_dir: Path) -> Path:
    """A data directory holding the development software unit ``dev`` (open system)."""
    expect(run_in("unit", "create-software", "--id", UNIT), 0)
    return data_dir


@pytest.fixture(name="init_json")
def _init_json(run_in: Run, with_unit: Path) -> dict[str, Any]:
    """The JSON printed by ``init --json`` for register KASSE-1 on unit ``dev``."""
    return dict(_json(expect(run_in("init", REGISTER, "--unit", UNIT, "--json"), 0)))


@pytest.fixture(name="till")
def _till(init_json: dict[str, Any], data_dir: Path) -> Path:
    """A data directory with register KASSE-1 initialized (its Startbeleg is number 1)."""
    return data_dir


@pytest.fixture(name="sale_file")
def _sale_file(tmp_path: Path) -> Path:
    """The standard test sale (request_id req-1, 16.70 EUR) written to a file."""
    path = tmp_path / "sale.json"
    path.write_text(json.dumps(sale()), encoding="utf-8")
    return path


@pytest.fixture(name="with_sale")
def _with_sale(run_in: Run, till: Path, sale_file: Path) -> Path:
    """Register KASSE-1 with its Startbeleg (1) and one sale (2)."""
    expect(run_in("issue", sale_file), 0)
    return till


@pytest.fixture(name="exported")
def _exported(run_in: Run, with_sale: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The DEP export and the crypto material container of KASSE-1 (two receipts)."""
    dep = tmp_path / "dep-export.json"
    container = tmp_path / "cryptographicMaterialContainer.json"
    expect(run_in("export", "dep", "--register", REGISTER, "-o", dep), 0)
    expect(run_in("export", "crypto-container", "--register", REGISTER, "-o", container), 0)
    return dep, container


class TestHelp:
    def test_root_help_lists_every_command(self, run: Run) -> None:
        """``--help`` exits 0 and lists every top-level command and group."""
        result = expect(run("--help"), 0)
        assert "Usage:" in result.stdout
        for command in ROOT_COMMANDS:
            assert re.search(rf"\b{command}\b", result.stdout), command

    @pytest.mark.parametrize("group", sorted(GROUPS))
    def test_group_help_lists_its_commands(self, run: Run, group: str) -> None:
        """``GROUP --help`` exits 0 and lists the group's sub-commands."""
        result = expect(run(group, "--help"), 0)
        assert "Usage:" in result.stdout
        for command in GROUPS[group]:
            assert command in result.stdout, command

    @pytest.mark.parametrize("command", LEAVES, ids=" ".join)
    def test_command_help_exits_zero(self, run: Run, command: list[str]) -> None:
        """``--help`` of every command exits 0 and shows its usage line."""
        result = expect(run(*command, "--help"), 0)
        assert f"Usage: till-agent {' '.join(command)}" in flat(result.stdout)

    @pytest.mark.parametrize("command", LEAVES, ids=" ".join)
    def test_help_paragraphs_flow_at_the_terminal_width(self, run: Run, command: list[str]) -> None:
        """A docstring's line breaks (kept narrow for the source) do not reach the help:
        each paragraph is wrapped by the terminal width only, in 80 columns here."""
        result = expect(run(*command, "--help"), 0)
        text = result.stdout.split("╭", 1)[0]  # the prose above the option panels
        lines = [line.strip() for line in text.splitlines()][3:]  # after the usage line
        for line, following in itertools.pairwise(lines):
            if line and following:  # a wrapped line fills the width before it breaks
                assert len(line) + 1 + len(following.split()[0]) > 78, (line, following)

    @pytest.mark.parametrize("command", LEAVES, ids=" ".join)
    def test_a_bracketed_section_name_is_shown_not_taken_as_markup(
        self, run: Run, command: list[str]
    ) -> None:
        """A help text naming a configuration section (``[backup] dir``) shows it: Rich
        takes an unescaped ``[backup]`` for a style tag and drops it."""
        leaf: Any = typer.main.get_command(app)
        for name in command:
            leaf = leaf.commands[name]
        texts = [leaf.help or "", *(getattr(p, "help", None) or "" for p in leaf.params)]
        sections = re.findall(r"\[[a-z_.]+\]", " ".join(texts))
        shown = flat(expect(run(*command, "--help"), 0).stdout)
        for section in sections:
            assert section in shown, section

    def test_the_command_line_loads_no_database_or_http_library_before_a_command_runs(
        self,
    ) -> None:
        """``--help``, ``--version`` and the table of commands load without SQLAlchemy,
        Alembic, httpx or the web server: each command imports what it uses when it runs
        (a fresh interpreter, since this test process has loaded them all)."""
        heavy = ("sqlalchemy", "alembic", "httpx", "fastapi", "uvicorn", "PIL", "escpos")
        code = f"import sys, agent.cli; print([m for m in {heavy!r} if m in sys.modules])"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "[]"

    def test_unwrap_help_joins_lines_not_paragraphs_or_list_items(self) -> None:
        text = "First line\nand more.\n\nSecond\nparagraph:\n- one\n- two\n1. three"
        assert (
            unwrap_help(text) == "First line and more.\n\nSecond paragraph:\n- one\n- two\n1. three"
        )

    def test_version_prints_the_package_version(self, run: Run) -> None:
        """``--version`` prints ``till-agent VERSION`` and exits 0."""
        result = expect(run("--version"), 0)
        assert result.stdout.strip() == f"till-agent {__version__}"


class TestConsoleScript:
    def test_installed_script_runs_help_and_version(self, tmp_path: Path) -> None:
        """The installed ``till-agent`` script answers --help and --version as a real process."""
        script = Path(sys.executable).parent / "till-agent"
        assert script.exists(), script
        env = {k: v for k, v in os.environ.items() if k != "TILL_AGENT_DATA_DIR"}
        helped = subprocess.run(
            [str(script), "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )
        assert helped.returncode == 0, helped.stderr
        assert "Usage:" in helped.stdout
        for command in ROOT_COMMANDS:
            assert re.search(rf"\b{command}\b", helped.stdout), command
        version = subprocess.run(
            [str(script), "--version"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
            check=False,
        )
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"till-agent {__version__}"
        assert not list(tmp_path.iterdir()), "help and version must not create a data directory"


class TestUnits:
    def test_create_software_prints_the_open_suite(self, run_in: Run) -> None:
        """An open-system development unit is reported with its id and an R1-AT suite."""
        result = expect(run_in("unit", "create-software", "--id", UNIT), 0)
        text = flat(result.stdout)
        assert f"unit {UNIT} (software)" in text
        assert re.search(r"suite R1-AT[1-9]\d* serial [0-9a-f]+", text), text

    def test_closed_key_id_gives_suite_r1_at0(self, run_in: Run) -> None:
        """``--key-id`` creates a closed-system unit: suite R1-AT0, the key id as serial."""
        result = expect(
            run_in(
                "unit", "create-software", "--id", "closed", "--key-id", CLOSED_KEY_ID, "--json"
            ),
            0,
        )
        assert _json(result) == {
            "id": "closed",
            "kind": "software",
            "suite": "R1-AT0",
            "serial": CLOSED_KEY_ID,
        }

    def test_closed_unit_signs_a_r1_at0_startbeleg(self, run_in: Run) -> None:
        """A register on a closed-system unit issues an R1-AT0 Startbeleg."""
        expect(run_in("unit", "create-software", "--id", "closed", "--key-id", CLOSED_KEY_ID), 0)
        body = _json(expect(run_in("init", REGISTER, "--unit", "closed", "--json"), 0))
        assert body["start_receipt"]["qr"].startswith(f"_R1-AT0_{REGISTER}_1_")
        assert body["start_receipt"]["signature_state"] == "signed"

    def test_list_shows_the_stored_units(self, run_in: Run) -> None:
        """``unit list`` shows every stored unit, as a table and as JSON."""
        expect(run_in("unit", "create-software", "--id", UNIT), 0)
        expect(run_in("unit", "create-software", "--id", "closed", "--key-id", CLOSED_KEY_ID), 0)
        units = _json(expect(run_in("unit", "list", "--json"), 0))
        assert [(u["id"], u["kind"]) for u in units] == [("closed", "software"), (UNIT, "software")]
        assert units[0]["suite"] == "R1-AT0"
        assert units[0]["serial"] == CLOSED_KEY_ID
        table = expect(run_in("unit", "list"), 0).stdout
        assert UNIT in table
        assert CLOSED_KEY_ID in table

    def test_create_software_twice_is_refused_cleanly(self, run_in: Run) -> None:
        """Creating a unit whose id already exists fails with an error message, not a crash."""
        expect(run_in("unit", "create-software", "--id", UNIT), 0)
        result = run_in("unit", "create-software", "--id", UNIT)
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code == 3  # the input collides, as init of an existing register
        assert UNIT in result.stderr


class TestInit:
    def test_init_prints_the_aes_key_and_its_check_value(
        self, run_in: Run, with_unit: Path
    ) -> None:
        """``init`` prints the Startbeleg, the base64 AES-256 key and the key's check value
        (to register in FinanzOnline: on a unit that is not a development one, AT1)."""
        expect(run_in("unit", "create-software", "--id", "prod", "--zda", "AT1"), 0)
        result = expect(run_in("init", REGISTER, "--unit", "prod"), 0)
        text = flat(result.stdout)
        assert f"{REGISTER} #1" in text
        assert "start" in text
        assert "signed" in text
        key = re.search(r"AES key \(register it in FinanzOnline, keep it secret\): (\S+)", text)
        check = re.search(r"AES key check value: (\S+)", text)
        assert key, text
        assert check, text
        assert len(base64.b64decode(key[1], validate=True)) == 32
        assert check[1] == aes_key_check_value(key[1])

    def test_init_json_has_a_signed_startbeleg_number_1(self, init_json: dict[str, Any]) -> None:
        """``init --json`` gives start_receipt number 1 (signed), the AES key and check value."""
        start = init_json["start_receipt"]
        assert start["number"] == 1
        assert start["signature_state"] == "signed"
        assert start["kind"] == "start"
        assert start["register"] == REGISTER
        assert len(start["jws"].split(".")) == 3
        assert len(base64.b64decode(init_json["aes_key"], validate=True)) == 32
        assert init_json["aes_key_check_value"] == aes_key_check_value(init_json["aes_key"])

    def test_init_with_an_unknown_unit_exits_3(self, run_in: Run, with_unit: Path) -> None:
        """``init`` naming a unit that is not stored is invalid input (exit 3)."""
        result = expect(run_in("init", REGISTER, "--unit", "nope"), 3)
        assert "nope" in result.stderr
        body = _json(expect(run_in("init", REGISTER, "--unit", "nope", "--json"), 3))
        assert body["field"] == "units"
        assert body["rule"] == "unit-unknown"

    def test_init_twice_exits_3(self, run_in: Run, till: Path) -> None:
        """Initializing a register that already exists is refused with rule register-exists."""
        body = _json(expect(run_in("init", REGISTER, "--unit", UNIT, "--json"), 3))
        assert body["rule"] == "register-exists"


class TestIssue:
    def test_issue_from_file_then_stdin_numbers_2_and_3(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """A sale from a file gets number 2 and the next one from stdin gets number 3."""
        first = _json(expect(run_in("issue", sale_file, "--json"), 0))
        second = _json(
            expect(run_in("issue", "-", "--json", input=json.dumps(sale(request_id="req-2"))), 0)
        )
        assert (first["number"], second["number"]) == (2, 3)
        assert first["kind"] == second["kind"] == "standard"
        assert first["signature_state"] == second["signature_state"] == "signed"
        assert second["qr"].startswith(f"_R1-AT100_{REGISTER}_3_")

    def test_issue_reads_stdin_by_default(self, run_in: Run, till: Path) -> None:
        """Without a source argument ``issue`` reads the sale from stdin."""
        body = _json(expect(run_in("issue", "--json", input=json.dumps(sale())), 0))
        assert body["number"] == 2

    def test_issue_text_output_shows_the_receipt(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """The text output names register, number, kind and state, the lines and the QR code."""
        text = expect(run_in("issue", sale_file), 0).stdout
        assert f"{REGISTER} #2 (2) standard signed" in flat(text)
        assert "Schnitzel" in text
        assert f"QR: _R1-AT100_{REGISTER}_2_" in text

    def test_float_money_exits_3_and_names_the_field(self, run_in: Run, till: Path) -> None:
        """A sale with a JSON number as money is invalid input (exit 3) naming the field."""
        bad = sale(payments=[{"method": "cash", "amount": 16.7}])
        result = expect(run_in("issue", "-", input=json.dumps(bad)), 3)
        assert "payments.0.amount" in result.stderr
        assert result.stdout == ""

    def test_float_money_json_prints_field_and_rule(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """``--json`` of a bad sale prints the error, field and rule; no number was consumed."""
        bad = sale()
        bad["lines"][0]["unit_price"] = 12.5
        body = _json(expect(run_in("issue", "-", "--json", input=json.dumps(bad)), 3))
        assert body["error"] == "InvalidSale"
        assert body["field"] == "lines.0.unit_price"
        assert isinstance(body["rule"], str)
        assert body["rule"]
        assert body["message"]
        good = _json(expect(run_in("issue", sale_file, "--json"), 0))
        assert good["number"] == 2

    def test_repeated_request_id_gives_the_same_receipt(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """Issuing the same request_id twice returns the first receipt and stores no second."""
        first = _json(expect(run_in("issue", sale_file, "--json"), 0))
        again = _json(expect(run_in("issue", "-", "--json", input=sale_file.read_bytes()), 0))
        assert again["number"] == first["number"] == 2
        assert again["jws"] == first["jws"]
        listed = _json(expect(run_in("receipts", "list", "--register", REGISTER, "--json"), 0))
        assert [r["number"] for r in listed] == [2, 1]

    def test_unreadable_source_exits_3(self, run_in: Run, till: Path, tmp_path: Path) -> None:
        """A sale file that cannot be read is invalid input with rule readable."""
        body = _json(expect(run_in("issue", tmp_path / "missing.json", "--json"), 3))
        assert body["field"] == "(document)"
        assert body["rule"] == "readable"

    def test_invalid_json_exits_3(self, run_in: Run, till: Path) -> None:
        """A document that is not JSON is invalid input with rule json."""
        body = _json(expect(run_in("issue", "-", "--json", input=b"{not json"), 3))
        assert body["field"] == "(document)"
        assert body["rule"] == "json"


class TestSpecial:
    def test_a_jahresbeleg_says_by_when_it_is_checked(self, service: ReceiptService) -> None:
        """What `special KASSE-1 yearly` prints after the receipt: the Belegcheck of the
        Jahresbeleg, due 15 February of the next year."""
        to_closing_day(service, "yearly")
        result = service.issue_special(REGISTER, "yearly")
        assert _owed_for(service, result) == (
            f"by 2027-02-15: check this Jahresbeleg with the BMF Belegcheck app, then:"
            f" till-agent checks done {REGISTER} yearly --year 2026 --reference ..."
        )
        assert _owed_for(service, service.issue_special(REGISTER, "null")) is None

    def test_closing_without_yes_is_refused(self, run_in: Run, till: Path, sale_file: Path) -> None:
        """A Schlussbeleg without --yes exits 3 and leaves the register open."""
        result = expect(run_in("special", REGISTER, "closing"), 3)
        assert "--yes" in result.stderr
        body = _json(expect(run_in("special", REGISTER, "closing", "--json"), 3))
        assert (body["field"], body["rule"]) == ("--yes", "confirm")
        assert _json(expect(run_in("issue", sale_file, "--json"), 0))["number"] == 2

    def test_a_schlussbeleg_says_by_when_the_decommissioning_is_reported(
        self, run_in: Run, till: Path
    ) -> None:
        """The decommissioning report is due a week after the Schlussbeleg's date (of a
        register on a unit that is not a development one: AT1)."""
        expect(run_in("unit", "create-software", "--id", "prod", "--zda", "AT1"), 0)
        expect(run_in("init", "KASSE-2", "--unit", "prod"), 0)
        text = expect(run_in("special", "KASSE-2", "closing", "--yes"), 0).stdout
        issued = dt.date.fromisoformat(
            _json(expect(run_in("receipts", "show", "KASSE-2", "2", "--json"), 0))["issued_at"][:10]
        )
        due = issued + dt.timedelta(days=7)
        assert (
            f"by {due}: report the decommissioning of register KASSE-2 in FinanzOnline,"
            " then: till-agent checks done KASSE-2 closing --reference ..."
        ) in " ".join(text.split())

    def test_closing_with_yes_closes_the_register(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """A confirmed Schlussbeleg is issued, after which ``issue`` is refused: exit 4 (a
        fiscal refusal, as the local API's 409), rule register-closed."""
        closing = _json(expect(run_in("special", REGISTER, "closing", "--yes", "--json"), 0))
        assert "FinanzOnline" not in json.dumps(closing)  # --json: the receipt only
        assert closing["number"] == 2
        assert closing["kind"] == "closing"
        assert closing["signature_state"] == "signed"
        result = expect(run_in("issue", sale_file), 4)
        assert "closed" in result.stderr
        body = _json(expect(run_in("issue", sale_file, "--json"), 4))
        assert body["rule"] == "register-closed"

    def test_null_receipt_is_issued(self, run_in: Run, till: Path) -> None:
        """``special REGISTER null`` issues a signed Nullbeleg with the next number."""
        body = _json(expect(run_in("special", REGISTER, "null", "--json"), 0))
        assert (body["number"], body["kind"], body["signature_state"]) == (2, "null", "signed")

    def test_unknown_kind_is_a_usage_error(self, run_in: Run, till: Path) -> None:
        """An unknown special receipt kind is a bad value of the command line (exit 2, as
        ``checks done``'s), naming the choices, as --help lists them."""
        refused = expect(run_in("special", REGISTER, "weekly", "--json"), 2)
        said = " ".join((refused.stdout + refused.stderr).replace("│", " ").split())
        assert "'weekly' is not one of 'null', 'monthly', 'yearly', 'closing'" in said
        assert "<null|monthly|yearly|" in expect(run_in("special", "--help"), 0).stdout


class TestReceipts:
    def test_list_text_shows_a_table(self, run_in: Run, with_sale: Path) -> None:
        """``receipts list`` prints a table with both receipts and the sale total."""
        text = expect(run_in("receipts", "list", "--register", REGISTER), 0).stdout
        assert "start" in text
        assert "standard" in text
        assert "16.70" in text

    def test_list_json_is_newest_first(self, run_in: Run, with_sale: Path) -> None:
        """``receipts list --json`` gives the receipts newest first with their totals in cents."""
        items = _json(expect(run_in("receipts", "list", "--register", REGISTER, "--json"), 0))
        assert [(i["number"], i["kind"], i["total_cents"]) for i in items] == [
            (2, "standard", 1670),
            (1, "start", 0),
        ]
        assert {i["signature_state"] for i in items} == {"signed"}

    def test_list_limit(self, run_in: Run, with_sale: Path) -> None:
        """``--limit 1`` lists only the newest receipt."""
        items = _json(
            expect(run_in("receipts", "list", "--register", REGISTER, "--limit", "1", "--json"), 0)
        )
        assert [i["number"] for i in items] == [2]

    def test_list_of_an_unknown_register_is_not_found(self, run_in: Run, with_sale: Path) -> None:
        """A mistyped Kassen-ID is not an empty register: exit 6 naming it."""
        result = expect(run_in("receipts", "list", "--register", "KASSE-9"), 6)
        assert "register 'KASSE-9' is not initialized" in flat(result.stderr)

    def test_show_text(self, run_in: Run, with_sale: Path) -> None:
        """``receipts show`` prints the receipt header, its lines and its QR code."""
        text = expect(run_in("receipts", "show", REGISTER, "2"), 0).stdout
        assert f"{REGISTER} #2 (2) standard signed" in flat(text)
        assert "Apfelsaft" in text
        assert f"QR: _R1-AT100_{REGISTER}_2_" in text

    def test_show_json_matches_the_issued_receipt(
        self, run_in: Run, till: Path, sale_file: Path
    ) -> None:
        """``receipts show --json`` returns what ``issue --json`` returned."""
        issued = _json(expect(run_in("issue", sale_file, "--json"), 0))
        shown = _json(expect(run_in("receipts", "show", REGISTER, "2", "--json"), 0))
        for key in ("register", "number", "receipt_id", "kind", "signature_state", "qr", "jws"):
            assert shown[key] == issued[key], key

    def test_show_missing_receipt_exits_6(self, run_in: Run, with_sale: Path) -> None:
        """Showing a receipt number that does not exist exits 6 (not found)."""
        result = expect(run_in("receipts", "show", REGISTER, "99"), 6)
        assert "99" in result.stderr
        body = _json(expect(run_in("receipts", "show", REGISTER, "99", "--json"), 6))
        assert body["error"] == "NotFound"


class TestExportAndVerify:
    def test_export_then_verify_is_valid(self, run: Run, exported: tuple[Path, Path]) -> None:
        """An exported DEP and crypto container verify: exit 0 and the verdict valid."""
        dep, container = exported
        assert len(_jws_list(dep)) == 2
        result = expect(run("verify", dep, container), 0)
        text = flat(result.stdout)
        assert text.startswith("valid: 2 receipts checked")
        assert "INVALID" not in text

    def test_export_dep_json_reports_the_count(
        self, run_in: Run, with_sale: Path, tmp_path: Path
    ) -> None:
        """``export dep --json`` reports the file and the number of receipts written."""
        dep = tmp_path / "out.json"
        body = _json(
            expect(run_in("export", "dep", "--register", REGISTER, "-o", dep, "--json"), 0)
        )
        assert body == {"file": str(dep), "receipts": 2}
        assert not dep.with_name(dep.name + ".partial").exists()

    def test_export_of_an_unknown_register_leaves_no_file(
        self, run_in: Run, with_sale: Path, tmp_path: Path
    ) -> None:
        """An export that fails (here: no such register) exits 6 and writes nothing, not
        even the partial file."""
        dep = tmp_path / "out.json"
        result = expect(run_in("export", "dep", "--register", "NOPE", "-o", dep), 6)
        assert "NOPE" in result.stderr
        assert list(tmp_path.glob("out.json*")) == []

    def test_export_of_a_reversed_date_range_is_a_usage_error(
        self, run_in: Run, with_sale: Path, tmp_path: Path
    ) -> None:
        """``--from`` after ``--to`` selects nothing: exit 2 naming both, no file, rather
        than an empty DEP that looks like a quiet period."""
        dep = tmp_path / "out.json"
        dates = ("--from", "2026-12-05", "--to", "2026-12-01")
        result = expect(run_in("export", "dep", "--register", REGISTER, "-o", dep, *dates), 2)
        message = flat(result.stderr)  # in a box: the message may break anywhere
        assert "the range is empty: --from 2026-12-05 is after" in message
        assert "--to 2026-12-01" in message
        assert list(tmp_path.glob("out.json*")) == []

    def test_crypto_container_is_private(self, exported: tuple[Path, Path]) -> None:
        """The crypto material container (it holds the AES key) is written with mode 0600."""
        _, container = exported
        assert container.stat().st_mode & 0o777 == 0o600
        assert "base64AESKey" in load_json(container)

    def test_crypto_container_replaces_an_old_file_privately(
        self, run_in: Run, with_sale: Path, tmp_path: Path
    ) -> None:
        """Over a world-readable older file: the new one is 0600 from its first byte (it
        is written under a private temporary name and renamed), nothing else is left."""
        container = tmp_path / "out" / "c.json"
        container.parent.mkdir()
        container.write_text("old")
        container.chmod(0o644)
        old_inode = container.stat().st_ino
        export = ("export", "crypto-container", "--register", REGISTER, "-o", container)
        expect(run_in(*export), 0)
        # renamed over the old file, not written into it (readable by others meanwhile)
        assert container.stat().st_ino != old_inode
        assert container.stat().st_mode & 0o777 == 0o600
        assert "base64AESKey" in load_json(container)
        assert [p.name for p in container.parent.iterdir()] == ["c.json"]
        assert _json(expect(run_in(*export, "--json"), 0)) == {"file": str(container)}
        missing = _json(expect(run_in(*export[:3], "NOPE", *export[4:], "--json"), 6))
        assert "NOPE" in missing["message"]

    def test_verify_json_of_a_valid_export(self, run: Run, exported: tuple[Path, Path]) -> None:
        """``verify --json`` of a valid export has ok true and no findings."""
        body = _json(expect(run("verify", *exported, "--json"), 0))
        expected = {"ok": True, "receipts": 2, "counter_checked": True, "partial": False}
        expected["notes"] = []
        expected |= {"fallback_receipts": 0, "fallback_zero_receipts": 0, "outages": 0}
        expected |= {"ends_in_outage": False, "open_outage_from": None}
        assert body == {**expected, "findings": []}

    def test_tampered_signature_fails_and_names_the_rule(
        self, run: Run, exported: tuple[Path, Path]
    ) -> None:
        """Changing one character of a JWS signature makes verify exit 1 naming the rule."""
        dep, container = exported
        data = load_json(dep)
        jws = data["Belege-Gruppe"][-1]["Belege-kompakt"][-1]
        head, signature = jws.rsplit(".", 1)
        middle = len(signature) // 2  # not the last character: it may carry only padding bits
        char = "A" if signature[middle] != "A" else "B"
        tampered = f"{head}.{signature[:middle]}{char}{signature[middle + 1 :]}"
        data["Belege-Gruppe"][-1]["Belege-kompakt"][-1] = tampered
        dep.write_text(json.dumps(data), encoding="utf-8")

        text = flat(expect(run("verify", dep, container), 1).stdout)
        assert "signature-invalid at 2" in text
        assert "INVALID" in text

        body = _json(expect(run("verify", dep, container, "--json"), 1))
        assert body["ok"] is False
        assert body["findings"]
        for finding in body["findings"]:
            assert set(finding) == {"receipt", "rule", "message"}
        assert {"receipt": "2", "rule": "signature-invalid"}.items() <= body["findings"][0].items()

    def test_verify_missing_file_is_a_clean_error(
        self, run: Run, exported: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """Verifying a DEP file that does not exist fails with a message, not a crash."""
        _, container = exported
        result = run("verify", tmp_path / "missing.json", container)
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code != 0
        assert "missing.json" in result.stdout + result.stderr


class TestSimulate:
    @pytest.mark.usefixtures("vectors")
    @pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
    def test_scenario_writes_files_that_verify(
        self, run: Run, tmp_path: Path, closed: bool
    ) -> None:
        """``simulate scenario`` writes the DEP and the container, and they verify (exit 0)."""
        assert SCENARIO.exists(), SCENARIO
        out_dir = tmp_path / "out"
        args = ["simulate", "scenario", SCENARIO, "--out", out_dir, "--json"]
        body = _json(expect(run(*args, *(["--closed"] if closed else [])), 0))
        dep, container = Path(body["dep"]), Path(body["container"])
        assert dep.is_file()
        assert container.is_file()
        assert dep.parent == container.parent == out_dir
        assert body["receipts"] == len(_jws_list(dep)) > 0
        assert 0 <= body["fallback"] < body["receipts"]
        payload, _, _ = split_jws(_jws_list(dep)[0])
        assert payload.suite == ("R1-AT0" if closed else "R1-AT1")
        text = flat(expect(run("verify", dep, container), 0).stdout)
        assert text.endswith(f"valid: {body['receipts']} receipts checked")
        if body["fallback"]:  # no finding, but noted (rksv.md 5)
            assert text.startswith(f"note: {body['fallback']} receipts carry the failure marker")

    @pytest.mark.usefixtures("vectors")
    def test_scenario_text_output_names_the_files(
        self, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without --json the command reports the receipt count and both file names."""
        monkeypatch.chdir(tmp_path)  # short relative paths: Rich folds long words at 80 columns
        text = flat(expect(run("simulate", "scenario", SCENARIO, "--out", "out"), 0).stdout)
        assert re.search(r"^\d+ receipts \(\d+ fallback\)", text), text
        assert "out/dep-export.json" in text
        assert "out/cryptographicMaterialContainer.json" in text
        assert (tmp_path / "out" / "dep-export.json").is_file()

    def test_missing_scenario_exits_2(self, run: Run, tmp_path: Path) -> None:
        """A scenario file that cannot be read is a configuration error (exit 2)."""
        result = expect(run("simulate", "scenario", tmp_path / "nope.json", "--out", tmp_path), 2)
        assert "nope.json" in flat(result.stderr)


class TestBench:
    def test_bench_receipts_json_prints_one_object(self, run: Run) -> None:
        """``bench receipts --n 50 --json`` prints exactly one JSON object with the metrics."""
        result = expect(run("bench", "receipts", "--n", "50", "--json"), 0)
        body = json.loads(result.stdout)
        assert isinstance(body, dict)
        keys = ("baseline_per_s", "agent_per_s", "ratio", "floor_per_s", "floor_ratio")
        for key in (*keys, "p50_ms", "p99_ms"):
            assert key in body, key
            assert isinstance(body[key], int | float), key
            assert not isinstance(body[key], bool), key
        # the fsync'd commit is part of each receipt's time, for both paths
        assert 0 < body["baseline_commit_ms"] < 1000 / body["baseline_per_s"]
        assert 0 < body["agent_commit_ms"] < 1000 / body["agent_per_s"]

    def test_bench_receipts_runs_in_the_given_directory_and_cleans_up(
        self, run: Run, tmp_path: Path
    ) -> None:
        """``--dir`` puts the bench databases on that disk and leaves nothing behind there;
        a directory that does not exist is a usage error."""
        expect(run("bench", "receipts", "--n", "20", "--json", "--dir", tmp_path), 0)
        assert list(tmp_path.iterdir()) == []
        expect(run("bench", "receipts", "--n", "20", "--dir", tmp_path / "nope"), 2)

    def test_bench_rejects_too_few_receipts(self, run: Run) -> None:
        """``--n`` below 10 is a usage error (exit 2)."""
        expect(run("bench", "receipts", "--n", "5"), 2)


class TestDataDirLock:
    def test_issue_exits_5_while_another_process_holds_the_lock(
        self,
        run_in: Run,
        till: Path,
        sale_file: Path,
        open_db: Callable[..., TillDB],
    ) -> None:
        """While another writer holds the data directory lock ``issue`` exits 5 and says so."""
        open_db(till)  # keeps the writer lock until teardown
        result = expect(run_in("issue", sale_file), 5)
        assert "another till-agent process" in flat(result.stderr)
        body = _json(expect(run_in("issue", sale_file, "--json"), 5))
        assert body["error"] == "DataDirLocked"
        assert "another" in body["message"]

    def test_readers_work_while_the_lock_is_held(
        self, run_in: Run, till: Path, open_db: Callable[..., TillDB]
    ) -> None:
        """Read-only commands do not need the writer lock."""
        open_db(till)
        items = _json(expect(run_in("receipts", "list", "--register", REGISTER, "--json"), 0))
        assert [i["number"] for i in items] == [1]

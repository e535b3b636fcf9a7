"""Output cut short by its reader (``till-agent init ... | head -2``): the command runs to its
end and exits with its own code, and one line on stderr says so and how to read it again,
without Python's "Exception ignored ... BrokenPipeError". Real processes, with a pipe whose
reading end is closed before the command writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factories import sale

CUT = "output cut short (broken pipe); what the command did is done: "
ENDED = "output cut short (broken pipe); the command ended with exit "


def _till(home: Path, *args: str | Path, closed: bool, **env: str) -> tuple[int, str, str]:
    """Run ``python -m agent`` with its stdout a pipe nobody reads (``closed``) or read to
    the end: (exit code, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TILL_AGENT_")}
    with subprocess.Popen(
        [sys.executable, "-m", "agent", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, "HOME": str(home), **env},
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        if closed:
            proc.stdout.close()  # before the interpreter has started: every write is EPIPE
            stdout = ""
        else:
            stdout = proc.stdout.read()
        stderr = proc.stderr.read()
        return proc.wait(timeout=60), stdout, stderr


@pytest.fixture(name="unit")
def _unit(tmp_path: Path, data_dir: Path) -> Path:
    """A data directory with closed-system software unit u1."""
    code, _, err = _till(
        tmp_path,
        *("unit", "create-software", "--id", "u1", "--key-id", "U:ATU12345678-K1"),
        *("--data-dir", data_dir),
        closed=False,
    )
    assert code == 0, err
    return data_dir


def test_init_into_a_closed_pipe_is_done_exit_0_and_says_where_to_look(
    tmp_path: Path, unit: Path
) -> None:
    """The register and its Startbeleg exist; stderr is one line naming `receipts show` and
    the crypto container (where the AES key the output held can be read again)."""
    code, _, err = _till(tmp_path, "init", "K-B", "--unit", "u1", "--data-dir", unit, closed=True)
    assert code == 0, err
    [line] = err.splitlines()
    assert line.startswith(CUT)
    assert "`till-agent receipts show K-B 1`" in line
    assert "`till-agent export crypto-container --register K-B -o FILE`" in line
    code, out, err = _till(
        tmp_path, "receipts", "list", "--register", "K-B", "--json", "--data-dir", unit,
        closed=False,
    )  # fmt: skip
    assert code == 0, err
    assert [(r["number"], r["kind"]) for r in json.loads(out)] == [(1, "start")]


def test_plain_json_output_is_handled_too(tmp_path: Path, unit: Path) -> None:
    """`--json` prints with print(), not Rich: the same line, exit 0, no traceback."""
    code, _, err = _till(tmp_path, "unit", "list", "--json", "--data-dir", unit, closed=True)
    assert code == 0, err
    assert err == (
        "output cut short (broken pipe); the command ran to its end (exit 0);"
        " run it again to read it all\n"
    )
    assert "Exception ignored" not in err
    assert "Traceback" not in err


def test_the_commands_own_exit_code_stands(tmp_path: Path, unit: Path) -> None:
    """`config check --json` refusing a configuration answers 3, cut short or not."""
    args = ("config", "check", "--json")
    refused = {"TILL_AGENT_DATA_DIR": str(unit), "TILL_AGENT_API__PORT": "-1"}
    code, out, _ = _till(tmp_path, *args, closed=False, **refused)
    assert (code, json.loads(out)["error"]) == (3, "ConfigurationError")
    code, _, err = _till(tmp_path, *args, closed=True, **refused)
    assert code == 3, err
    assert err.startswith(f"{ENDED}3 (invalid input);")


def test_output_read_to_the_end_says_nothing(tmp_path: Path, unit: Path) -> None:
    code, out, err = _till(tmp_path, "unit", "list", "--json", "--data-dir", unit, closed=False)
    assert code == 0
    assert json.loads(out)[0]["id"] == "u1"
    assert CUT not in err


@pytest.fixture(name="register")
def _register(tmp_path: Path, unit: Path) -> Path:
    """``unit``'s data directory with register K-B and its Startbeleg."""
    code, _, err = _till(tmp_path, "init", "K-B", "--unit", "u1", "--data-dir", unit, closed=False)
    assert code == 0, err
    return unit


def _numbers(home: Path, data_dir: Path) -> list[tuple[int, str]]:
    args = ("receipts", "list", "--register", "K-B", "--json", "--data-dir", data_dir)
    code, out, err = _till(home, *args, closed=False)
    assert code == 0, err
    return sorted((r["number"], r["kind"]) for r in json.loads(out))


class TestRefusedCommandCutShort:
    """A refused command whose output is cut short stored nothing: the line names its exit
    status, never "what the command did is done" nor where to read a receipt."""

    def _refused(self, home: Path, *args: str | Path, status: int, meaning: str) -> None:
        code, _, err = _till(home, *args, "--json", closed=True)
        assert code == status, err
        [line] = err.splitlines()
        assert line.startswith(f"{ENDED}{status} ({meaning});"), line
        assert "done" not in line
        assert "stored" not in line

    def test_an_invalid_sale(self, tmp_path: Path, register: Path) -> None:
        """`issue bad.json --json` (qty "abc") exits 3; K-B holds its Startbeleg only."""
        bad = tmp_path / "bad.json"
        lines = [{"text": "x", "qty": "abc", "unit_price": "1.00", "vat": "normal"}]
        bad.write_text(json.dumps(sale(register="K-B", request_id="bad", lines=lines)))
        self._refused(
            tmp_path, "issue", bad, "--data-dir", register, status=3, meaning="invalid input"
        )
        assert _numbers(tmp_path, register) == [(1, "start")]

    def test_an_init_of_a_register_that_exists(self, tmp_path: Path, register: Path) -> None:
        """`init K-B` again exits 3 and says nothing of a Startbeleg stored."""
        args = ("init", "K-B", "--unit", "u1", "--data-dir", register)
        self._refused(tmp_path, *args, status=3, meaning="invalid input")
        assert _numbers(tmp_path, register) == [(1, "start")]

    def test_a_fiscal_refusal(self, tmp_path: Path, register: Path) -> None:
        """`special K-B null` on a register closed by its Schlussbeleg exits 4."""
        closing = ("special", "K-B", "closing", "--yes", "--data-dir", register)
        code, _, err = _till(tmp_path, *closing, closed=False)
        assert code == 0, err
        null = ("special", "K-B", "null", "--data-dir", register)
        self._refused(tmp_path, *null, status=4, meaning="fiscal refusal")
        assert _numbers(tmp_path, register) == [(1, "start"), (2, "closing")]

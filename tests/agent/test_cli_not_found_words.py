"""What the command line says when there is nothing to read: a --data-dir naming a file
is no directory (as init says), not a till waiting for `init`; `receipts show` of an
unknown register says the register is not initialized, as every other command does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factories import Run, expect


@pytest.fixture(name="a_file")
def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "afile"
    path.write_text("not a data directory\n")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ("unit", "list"),
        ("receipts", "list", "--register", "KASSE-1"),
        ("receipts", "show", "KASSE-1", "1"),
        ("outage", "list"),
        ("init", "KASSE-1", "--unit", "dev"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_data_dir_that_is_a_file_is_named_as_no_directory(
    run: Run, a_file: Path, command: tuple[str, ...]
) -> None:
    body = json.loads(expect(run(*command, "--data-dir", a_file, "--json"), 5).stdout)
    assert body["error"] == "StorageError"
    assert body["message"] == f"the data directory {a_file} is not a directory"
    assert a_file.read_text() == "not a data directory\n"


def test_a_missing_data_dir_still_says_run_init(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    body = json.loads(expect(run("unit", "list", "--data-dir", missing, "--json"), 6).stdout)
    assert "run `till-agent init` first" in body["message"]


def test_receipts_show_of_an_unknown_register_says_it_is_not_initialized(
    run: Run, till: Path
) -> None:
    args = ("--data-dir", till, "--json")
    shown = json.loads(expect(run("receipts", "show", "KASSE-9", "1", *args), 6).stdout)
    assert shown["message"] == "register 'KASSE-9' is not initialized in this till database"
    listed = json.loads(expect(run("receipts", "list", "--register", "KASSE-9", *args), 6).stdout)
    assert listed["message"] == shown["message"]
    known = json.loads(expect(run("receipts", "show", "KASSE-1", "99", *args), 6).stdout)
    assert known["message"] == "register KASSE-1 has no receipt 99"

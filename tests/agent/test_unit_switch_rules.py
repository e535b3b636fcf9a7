"""What ``unit switch`` owes beyond the switch itself (agent/unit_switch.py): ``checks done
REGISTER unit`` records one check per reference when several switches owe theirs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from factories import Run, expect, flat, sale

REGISTER = "K3"

Till = Callable[..., Result]


@pytest.fixture(name="till")
def _till(run: Run, data_dir: Path) -> Till:
    """The command line on the test's data directory: ``till(*args, code=0)``."""

    def till(*args: str | Path, code: int = 0, input: str | None = None) -> Result:
        return expect(run(*args, "--data-dir", data_dir, input=input), code)

    return till


def _units(till: Till, **zdas: str) -> None:
    """Software units by id and provider (AT100: a development unit)."""
    for unit, zda in zdas.items():
        till("unit", "create-software", "--id", unit, "--zda", zda)


def _sell(till: Till, request_id: str, register: str = REGISTER) -> dict[str, Any]:
    raw = json.dumps(sale(request_id=request_id, register=register))
    return dict(json.loads(till("issue", "-", "--json", input=raw).stdout))


def _switch(till: Till, unit: str, code: int = 0, register: str = REGISTER) -> dict[str, Any]:
    return dict(json.loads(till("unit", "switch", register, unit, "--json", code=code).stdout))


def _rows(data_dir: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _switches(data_dir: Path) -> list[tuple[Any, ...]]:
    return _rows(data_dir, "SELECT data FROM journal WHERE kind = 'register.unit_switched'")


@pytest.fixture(name="two_switches")
def _two_switches(till: Till) -> None:
    """K3 on c1, switched to c2 (unit check of receipt 2) and c3 (of receipt 3), a sale
    after each: two open unit checks."""
    _units(till, c1="AT1", c2="AT1", c3="AT1")
    till("init", REGISTER, "--unit", "c1")
    for unit, request_id in (("c2", "a"), ("c3", "b")):
        _switch(till, unit)
        _sell(till, request_id)


@pytest.mark.usefixtures("two_switches")
class TestChecksDoneUnit:
    def _open(self, till: Till) -> list[tuple[int, str | None]]:
        listed = json.loads(till("checks", "list", "--all", "--json").stdout)
        return [(c["number"], c["reference"]) for c in listed if c["kind"] == "unit"]

    def test_the_same_reference_again_changes_nothing(self, till: Till, data_dir: Path) -> None:
        """The latest switch's check is recorded; the same command again finds it by its
        reference (it closed the other open check too, with the same reference)."""
        args = ("checks", "done", REGISTER, "unit", "--reference", "FON-C3", "--json")
        first = json.loads(till(*args).stdout)
        again = json.loads(till(*args).stdout)
        assert first == again
        assert first["number"] == 3
        assert self._open(till) == [(2, None), (3, "FON-C3")]
        assert len(_rows(data_dir, "SELECT 1 FROM journal WHERE kind = 'check.done'")) == 1

    def test_receipt_names_the_switch(self, till: Till) -> None:
        """--receipt 2 records the first switch's check; a receipt no check has is exit 6."""
        said = till("checks", "done", REGISTER, "unit", "--receipt", "2", "--reference", "FON-C2")
        assert f"{REGISTER}: unit check (receipts from 2 on) done" in flat(said.stdout)
        assert self._open(till) == [(2, "FON-C2"), (3, None)]
        args = ("checks", "done", REGISTER, "unit", "--receipt", "9", "--reference", "X")
        assert "no unit check of receipt 9" in flat(till(*args, code=6).stderr)

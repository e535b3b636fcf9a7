"""Printing a register set up with ``till-agent init`` (the production path: ``unit
create-software``, ``init SHOP-7``, then ``run``): its Startbeleg is printed; receipts
issued before printing was set up are not, and the log says so once."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from service.conftest import Start
from typer.testing import CliRunner

from agent.cli import app
from factories import sale
from storage.db import open_till_db

REGISTER = "SHOP-7"


def _cli(data_dir: Path, *args: str, stdin: str | None = None) -> None:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], input=stdin)
    assert result.exit_code == 0, result.output


def _jobs(data_dir: Path) -> list[tuple[int, str]]:
    db = open_till_db(data_dir, writer=False)
    try:
        with db.read_connection() as conn:
            rows = conn.execute(
                "SELECT number, state FROM print_jobs WHERE register_id = ? AND copy = 0"
                " ORDER BY number",
                (REGISTER,),
            ).fetchall()
    finally:
        db.close()
    return [(int(r[0]), str(r[1])) for r in rows]


def _wait_for(data_dir: Path, jobs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    deadline = time.monotonic() + 10
    while (found := _jobs(data_dir)) != jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _not_printed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "before printing was set up" in r.getMessage()
    ]


@pytest.fixture(name="initialized")
def _initialized(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory set up as the README says: a unit, then ``init SHOP-7``."""
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
    _cli(data_dir, "unit", "create-software", "--id", "u1")
    _cli(data_dir, "init", REGISTER, "--unit", "u1")
    return data_dir


class TestFirstRun:
    def test_the_startbeleg_of_a_register_set_up_with_init_is_printed(
        self, start: Start, initialized: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first ``run`` prints receipt 1, and logs nothing about unprinted ones."""
        start(register={"id": REGISTER}, printer={"kind": "file"})
        assert _wait_for(initialized, [(0, "skipped"), (1, "printed")]) == [
            (0, "skipped"),
            (1, "printed"),
        ]
        assert list((initialized / "prints").glob("*.bin"))  # the file printer's job
        assert _not_printed(caplog) == []

    def test_receipts_before_printing_are_not_printed_and_the_log_says_so_once(
        self, start: Start, initialized: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Receipts issued (``till-agent issue``) before the first ``run``: a ``skipped``
        job for the last, an INFO line naming the register, the numbers and ``reprint``;
        a later receipt is printed, and the next start logs nothing again."""
        _cli(initialized, "issue", "-", stdin=json.dumps(sale(register=REGISTER)))
        till = start(register={"id": REGISTER}, printer={"kind": "file"})
        [line] = _not_printed(caplog)
        assert f"register {REGISTER}: receipts 1 to 2 were issued before printing" in line
        assert f"till-agent reprint {REGISTER} NUMBER" in line
        till.backend.issue_sale(json.dumps(sale(register=REGISTER, request_id="b")).encode())
        assert _wait_for(initialized, [(2, "skipped"), (3, "printed")]) == [
            (2, "skipped"),
            (3, "printed"),
        ]
        till.stop()
        caplog.clear()
        start(register={"id": REGISTER}, printer={"kind": "file"})
        assert _not_printed(caplog) == []

"""``till-agent restore`` refuses what the till database in the data directory is ahead of,
beyond its receipts: a chain signing a killed process left unfinished, and a unit switch;
and a database made afresh (no register of the backup's with receipts) vouches for nothing
(the restore review's findings 1-3)."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.fakes.chain_service import ChainServiceFake
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, expect, flat, sale
from storage import open_till_db
from storage.db import DB_FILE

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"  # the chain fake's (conftest.CHAIN_TOKEN)


@pytest.fixture(name="chain_hold")
def _chain_hold() -> float:
    """A lost answer holds its connection until the test has killed the process waiting."""
    return 30.0


def _backup(data_dir: Path, target: Path) -> Path:
    source, copy = sqlite3.connect(data_dir / DB_FILE), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


def _restore(run: Run, backup: Path, data_dir: Path, *extra: str, code: int = 0) -> dict[str, Any]:
    result = expect(run("restore", backup, "--data-dir", data_dir, "--json", *extra), code)
    return dict(json.loads(result.stdout))


def _files(data_dir: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(data_dir.iterdir())
        if p.is_file() and not p.name.endswith("-shm") and p.name != ".lock"
    }


def _query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def _chain_till(data_dir: Path, chain: ChainServiceFake, tmp_path: Path) -> None:
    """KASSE-1 on the chain fake: its Startbeleg (1) and a sale (2); the database closed."""
    token_file = tmp_path / "chain-token"
    token_file.write_text(TOKEN)
    config = UnitConfig(id="chain", kind="chain", zda="AT1", url=chain.url, token_file=token_file)
    db, registry = open_till_db(data_dir), UnitRegistry()
    try:
        add_unit(db, registry, config)
        service = ReceiptService(db, registry, sign_timeout=5.0)
        service.init_register(RegisterSetup("KASSE-1", ["chain"]))
        assert service.issue(sale(request_id="s1")).number == 2
    finally:
        db.close()
        registry.close()


def _killed_while_signing(data_dir: Path, chain: ChainServiceFake, *args: str, body: str) -> None:
    """``till-agent ARGS`` in a process of its own, SIGKILLed while the chain service holds
    the answer to the PUT of the receipt it signed (its intent is committed)."""
    stored = chain.receipts_stored
    chain.mode = "lose_put_response"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agent", *args, "--data-dir", str(data_dir)]
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert child.stdin is not None
        child.stdin.write(body.encode())
        child.stdin.close()
        deadline = time.monotonic() + 30.0
        while chain.receipts_stored == stored and time.monotonic() < deadline:
            time.sleep(0.02)
        assert chain.receipts_stored == stored + 1, "the chain service signed nothing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    chain.mode = "up"


def _numbers_signed(chain: ChainServiceFake, register: str) -> list[int]:
    """The receipt numbers of what the chain service signed for ``register``."""
    numbers = []
    for signing_input in chain.signing_inputs(register):
        body = signing_input.split(".")[1]
        body += "=" * (-len(body) % 4)
        numbers.append(int(base64.urlsafe_b64decode(body).decode().split("_")[3]))
    return numbers


class TestInterruptedChainSigning:
    def test_a_backup_before_an_interrupted_signing_is_behind(
        self, run: Run, chain: ChainServiceFake, tmp_path: Path
    ) -> None:
        """`issue` killed while the chain service signs receipt 3 leaves its intent past
        the register's last number (2). A backup ending at 2 is behind (exit 4, --yes or
        not): restored, the next sale would be signed as a second 3. A backup taken after
        the kill (its intent in it) is accepted without --yes, and the till stores that
        3 and sells 4: the chain service never signs a number twice."""
        data = tmp_path / "till"
        _chain_till(data, chain, tmp_path)
        before = _backup(data, tmp_path / "before.sqlite3")
        _killed_while_signing(data, chain, "issue", "-", body=json.dumps(sale(request_id="s2")))
        assert _query(data, "SELECT last_number FROM registers") == [(2,)]
        assert _query(data, "SELECT max(number) FROM pending_signings") == [(3,)]
        files = _files(data)

        body = _restore(run, before, data, code=4)
        assert body["error"] == "BackupBehind"
        assert body["registers"] == [
            {"register": "KASSE-1", "backup_number": 2, "current_number": 3}
        ]
        assert "the chain service was signing 3 when a process ended" in flat(body["message"])
        assert _restore(run, before, data, "--yes", code=4)["registers"] == body["registers"]
        assert _files(data) == files

        after = _backup(data, tmp_path / "after.sqlite3")
        done = _restore(run, after, data)
        assert done["confirmed_by_operator"] is False
        assert done["registers"][0]["signing"] == 3
        issued = expect(run("issue", "-", "--data-dir", data, input=json.dumps(sale())), 0)
        assert "KASSE-1 #4" in issued.stdout
        assert _query(data, "SELECT number FROM receipts ORDER BY number") == [
            (1,),
            (2,),
            (3,),
            (4,),
        ]
        signed = _numbers_signed(chain, "KASSE-1")
        assert sorted(signed) == sorted(set(signed)), f"a number signed twice: {signed}"

    def test_a_startbeleg_interrupted_before_its_register_exists_is_behind(
        self, run: Run, chain: ChainServiceFake, tmp_path: Path
    ) -> None:
        """`init KASSE-2` killed while the chain service signs its Startbeleg: no KASSE-2
        row, only its intent. A backup without KASSE-2 is behind for it."""
        data = tmp_path / "till"
        _chain_till(data, chain, tmp_path)
        backup = _backup(data, tmp_path / "backup.sqlite3")
        _killed_while_signing(data, chain, "init", "KASSE-2", "--unit", "chain", body="")
        assert _query(data, "SELECT id FROM registers") == [("KASSE-1",)]
        body = _restore(run, backup, data, code=4)
        assert body["registers"] == [
            {"register": "KASSE-2", "backup_number": None, "current_number": 1}
        ]


class TestMadeAfresh:
    def test_a_database_without_a_register_vouches_for_nothing(
        self, run: Run, till: Path, tmp_path: Path
    ) -> None:
        """A new machine where `unit create-software` ran before the restore: its database
        has no register. --yes is needed (exit 3); with it, the output says what it
        replaced."""
        backup = _backup(till, tmp_path / "backup.sqlite3")
        fresh = tmp_path / "fresh"
        expect(run("unit", "create-software", "--id", "dev", "--data-dir", fresh), 0)
        body = _restore(run, backup, fresh, code=3)
        assert (body["field"], body["rule"]) == ("--yes", "confirm")
        assert "holds no receipt of a register of the backup" in flat(body["message"])
        human = expect(run("restore", backup, "--data-dir", fresh, "--yes"), 0)
        said = flat(human.stdout)
        assert "()" not in said
        assert "(a till database without a register)" in said
        assert "--yes: you confirmed" in said
        assert _query(fresh, "SELECT number FROM receipts ORDER BY number") == [(1,), (2,)]


class TestUnitSwitch:
    def test_a_backup_before_a_switch_is_behind(self, run: Run, till: Path, tmp_path: Path) -> None:
        """KASSE-1 switched from dev to c2 after the backup, no receipt since: restoring
        it would sign with dev again and lose c2 and its FinanzOnline obligation. Refused
        (exit 4, --yes or not) naming the switch; a backup after the switch is restored."""
        backup = _backup(till, tmp_path / "backup.sqlite3")
        unit = ("--id", "c2", "--zda", "AT1", "--data-dir", till)
        expect(run("unit", "create-software", *unit), 0)
        expect(run("unit", "switch", "KASSE-1", "c2", "--data-dir", till), 0)
        files = _files(till)
        body = _restore(run, backup, till, code=4)
        assert body["error"] == "SwitchedAfterBackup"
        [switch] = body["switches"]
        assert (switch["register"], switch["old_unit"], switch["new_unit"]) == (
            "KASSE-1",
            "dev",
            "c2",
        )
        assert "it switched KASSE-1 from dev to c2" in flat(body["message"])
        assert _restore(run, backup, till, "--yes", code=4)["switches"] == body["switches"]
        assert _files(till) == files
        after = _backup(till, tmp_path / "after.sqlite3")
        assert _restore(run, after, till)["confirmed_by_operator"] is False
        assert _query(till, "SELECT active_unit FROM registers") == [("c2",)]

    def test_another_tills_switch_left_behind_is_named(
        self, run: Run, till: Path, tmp_path: Path
    ) -> None:
        """Over another till's database (a KASSE-1 set up anew and switched, --yes), its
        unit switches the backup lacks are named: they are left in the replaced copy."""
        backup = _backup(till, tmp_path / "backup.sqlite3")
        other = tmp_path / "other"
        for args in (
            ("unit", "create-software", "--id", "dev", "--zda", "AT1"),
            ("init", "KASSE-1", "--unit", "dev"),
            ("unit", "create-software", "--id", "c2", "--zda", "AT1"),
            ("unit", "switch", "KASSE-1", "c2"),
        ):
            body = json.dumps(sale(request_id=f"o{time.monotonic_ns()}"))
            expect(run(*args, "--data-dir", other, input=body), 0)
        human = expect(run("restore", backup, "--data-dir", other, "--yes"), 0)
        said = flat(human.stdout)
        assert "its unit switches are not in the backup, only in that copy" in said
        assert "KASSE-1 from dev to c2" in said
        done = _restore(run, _backup(other, tmp_path / "b2.sqlite3"), other)
        assert done["replaced_unit_switches_left_behind"] == []

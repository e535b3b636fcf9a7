"""A `till-agent restore` killed with SIGKILL before any one of its file-system steps
never costs the till a receipt number: nothing opens (or creates) a database that lacks
an acknowledged receipt, the same restore run again finishes it, and ``--abandon`` puts
the replaced database back whole (agent/restore.py, agent/restore_pending.py, the open
guard in storage/db.py; the crash review of restore)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FrozenClock
from agent.errors import StorageError
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from factories import add_unit, cli_run, expect, sale
from storage import open_till_db
from storage.db import DB_FILE

CHILD = Path(__file__).resolve().parent / "restore_child.py"
REGISTER = "KASSE-1"
RESTORE_MARKER = "restore.pending"
ACKNOWLEDGED = [1, 2, 3, 4, 5, 6]  # the Startbeleg and five sales, all on paper
# the restore's file-system steps: the data directory's mkdir, the copy's two fsyncs, the
# marker (3), the replaced directory and its name's fsync, the -wal, -shm and database
# moved into it and two fsyncs, the copy renamed and fsynced, the marker removed and fsynced
STEPS = 17


def _backup(db_path: Path, target: Path) -> Path:
    source, copy = sqlite3.connect(db_path), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


def _checkpoint(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


@pytest.fixture(name="template", scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A till killed after receipt 6 (its image: receipts 1-3 checkpointed into
    till.sqlite3, 4-6 only in its -wal), a backup taken at 6 (``now``) and one at 4
    (``older``)."""
    root = tmp_path_factory.mktemp("restore-kill")
    key, cert = create_software_unit(root / "units", name="dev")
    live = root / "live"
    db = open_till_db(live)
    registry = UnitRegistry()
    try:
        add_unit(
            db,
            registry,
            UnitConfig(id="dev", kind="software", zda="AT1", key_file=key, certificate_file=cert),
        )
        service = ReceiptService(
            db, registry, clock=FrozenClock(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))
        )
        service.init_register(RegisterSetup(REGISTER, ["dev"]))
        for n in range(5):
            service.issue(sale(request_id=f"r{n}"))
            if n == 1:
                _checkpoint(db.path)
            if n == 2:
                _backup(db.path, root / "older.sqlite3")
        _backup(db.path, root / "now.sqlite3")
        (root / "data").mkdir(mode=0o700)
        for suffix in ("", "-wal", "-shm"):
            shutil.copy2(live / f"{DB_FILE}{suffix}", root / "data" / f"{DB_FILE}{suffix}")
    finally:
        registry.close()
        db.close()
    assert _numbers(root / "data") == ACKNOWLEDGED
    assert _numbers(root / "data", main_only=True) == [1, 2, 3]
    return root


def _numbers(data_dir: Path, *, main_only: bool = False) -> list[int]:
    """The receipt numbers a reader of the files there sees (``main_only``: the database
    file without its -wal)."""
    uri = f"{(data_dir / DB_FILE).as_uri()}?mode=ro" + ("&immutable=1" if main_only else "")
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [int(r[0]) for r in conn.execute("SELECT number FROM receipts ORDER BY number")]
    finally:
        conn.close()


def _case(template: Path, where: Path) -> Path:
    shutil.copytree(template, where)
    return where


def _killed(case: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    args = ["restore", str(case / "now.sqlite3"), "--data-dir", str(case / "data"), "--json"]
    return subprocess.run(
        [sys.executable, str(CHILD), str(kill_at), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _restore(case: Path, *args: str, code: int) -> dict[str, Any]:
    result = expect(cli_run()("restore", *args, "--data-dir", case / "data", "--json"), code)
    return dict(json.loads(result.stdout))


def _opened_numbers(data_dir: Path, **kwargs: bool) -> list[int] | str:
    """What open_till_db gives: the receipt numbers, or the name of its refusal."""
    try:
        db = open_till_db(data_dir, **kwargs)
    except StorageError as exc:  # RestorePending, NoDatabase, ...
        return type(exc).__name__
    try:
        with db.read_connection() as conn:
            return [int(r[0]) for r in conn.execute("SELECT number FROM receipts ORDER BY 1")]
    finally:
        db.close()


def _restored_events(data_dir: Path) -> int:
    """How many ``till.restored`` events the database there has; the last one must be."""
    conn = sqlite3.connect(f"{(data_dir / DB_FILE).as_uri()}?mode=ro", uri=True)
    try:
        kinds = [str(r[0]) for r in conn.execute("SELECT kind FROM journal ORDER BY seq")]
    finally:
        conn.close()
    assert "till.restored" not in kinds or kinds[-1] == "till.restored", kinds
    return kinds.count("till.restored")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_restore_has_the_steps_the_kill_test_counts(template: Path, tmp_path: Path) -> None:
    """Run to its end: every file-system step is one the test below kills at."""
    case = _case(template, tmp_path / "case")
    done = _killed(case, 0)
    assert done.returncode == 0, done.stderr
    steps = done.stderr.split("STEPS\n", 1)[1].splitlines()
    assert len(steps) == STEPS, steps


@pytest.mark.parametrize("kill_at", range(1, STEPS + 1))
def test_a_killed_restore_hides_no_receipt_and_the_same_restore_finishes_it(
    template: Path, tmp_path: Path, kill_at: int
) -> None:
    """Killed before step ``kill_at``: a reader sees receipts 1-6 or is refused (never 1-3
    of the database without its -wal); a writer that may create the database (`run`,
    `init`) never makes a new KASSE-1; an older backup is refused; the same restore run
    again, without --yes, ends with the backup's database and its one ``till.restored``
    event, the old database whole (database and -wal) in one replaced directory, no copy
    and no marker left; ``--abandon`` instead puts the old files back unchanged."""
    case = _case(template, tmp_path / "case")
    killed = _killed(case, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pending = (case / "data" / RESTORE_MARKER).exists()

    look = _case(case, tmp_path / "look")
    assert _opened_numbers(look / "data", writer=False, create=False) in (
        ACKNOWLEDGED,
        "RestorePending",
    )
    assert _opened_numbers(look / "data") in (ACKNOWLEDGED, "RestorePending")

    older = _case(case, tmp_path / "older")
    refused = _restore(older, str(older / "older.sqlite3"), code=5 if pending else 4)
    assert refused["error"] == ("RestorePending" if pending else "BackupBehind")

    undo = _case(case, tmp_path / "undo")
    if pending:
        _restore(undo, "--abandon", code=0)
        assert not (undo / "data" / RESTORE_MARKER).exists()
        assert _numbers(undo / "data") == ACKNOWLEDGED
        for suffix in ("", "-wal"):
            name = f"{DB_FILE}{suffix}"
            assert _sha256(undo / "data" / name) == _sha256(template / "data" / name)
        assert not list((undo / "data").glob("replaced-*"))
    else:
        assert _restore(undo, "--abandon", code=6)["error"] == "NotFound"

    data = case / "data"
    if not pending and _restored_events(data) == 1:
        assert kill_at == STEPS  # only the marker's removal was not fsynced: it is done
    else:
        done = _restore(case, str(case / "now.sqlite3"), code=0)
        assert done["resumed"] is pending
        assert done["confirmed_by_operator"] is False
    assert _numbers(data) == ACKNOWLEDGED
    assert _restored_events(data) == 1
    [replaced] = data.glob("replaced-*")
    assert sorted(p.name for p in replaced.iterdir()) == [
        DB_FILE,
        f"{DB_FILE}-shm",
        f"{DB_FILE}-wal",
    ]
    for suffix in ("", "-wal"):
        name = f"{DB_FILE}{suffix}"
        assert _sha256(replaced / name) == _sha256(template / "data" / name)
    assert not list(data.glob(".*.tmp*"))
    assert not (data / RESTORE_MARKER).exists()
    assert _opened_numbers(data) == ACKNOWLEDGED

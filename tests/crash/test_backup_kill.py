"""A DEP backup process killed with SIGKILL is never half a backup: the final name either
does not exist or holds a complete file, and the next run ends with the file recorded
under its true SHA-256 (agent/backup.py, agent/durable.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.at_rksv.dep import stream_dep
from agent.at_rksv.verify import verify_dep
from agent.backup import DepBackups
from agent.clock import FrozenClock
from agent.export import export_container
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from factories import add_unit, db_rows, sale
from storage import open_till_db

CHILD = Path(__file__).resolve().parent / "backup_child.py"
SALES = 2000  # with the Startbeleg: a 2001-receipt DEP, several hundred KiB
REGISTER = "KASSE-1"
NAME = f"{REGISTER}_2026-Q1.dep.json"


@pytest.fixture(name="template", scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed data directory: KASSE-1 with its Startbeleg and SALES sales in March 2026."""
    root = tmp_path_factory.mktemp("backup-kill")
    key, cert = create_software_unit(root / "units", name="dev")
    db = open_till_db(root / "data")
    registry = UnitRegistry()
    try:
        add_unit(
            db,
            registry,
            UnitConfig(id="dev", kind="software", zda="AT1", key_file=key, certificate_file=cert),
        )
        clock = FrozenClock(dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC))
        service = ReceiptService(db, registry, clock=clock)
        service.init_register(RegisterSetup(REGISTER, ["dev"]))
        for n in range(SALES):
            service.issue(sale(request_id=f"r{n}"))
    finally:
        registry.close()
        db.close()
    return root / "data"


def _killed_at(where: str, data_dir: Path, backup_dir: Path) -> None:
    """Run the child until it pauses at ``where``, then SIGKILL it."""
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(backup_dir), where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            ready, _, _ = select.select([child.stdout], [], [], 60.0)
            line = child.stdout.readline() if ready else b""
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert line == b"PAUSED\n", child.stderr.read()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("where", ["writing", "named"])
def test_a_killed_backup_is_absent_or_whole_and_the_next_run_records_it(
    template: Path, tmp_path: Path, where: str
) -> None:
    """Killed while writing: no file under the final name (only a temporary one, removed
    by the next run). Killed after the name and before the record: the whole file is
    there, and the next run records it unchanged. Either way the record's SHA-256 is the
    file's and the file verifies."""
    data_dir, backup_dir = tmp_path / "data", tmp_path / "backups"
    shutil.copytree(template, data_dir)
    _killed_at(where, data_dir, backup_dir)
    path = backup_dir / REGISTER / NAME
    left = sorted(p.name for p in path.parent.iterdir())
    if where == "writing":
        assert not path.exists()
        [temporary] = left
        assert temporary.startswith(f".{NAME}.")
        assert temporary.endswith(".tmp")
    else:
        assert left == [NAME]
        inode = path.stat().st_ino

    db = open_till_db(data_dir, create=False)
    try:
        assert db_rows(db, "SELECT * FROM dep_backups") == []
        clock = FrozenClock(dt.datetime(2026, 4, 15, 8, 0, tzinfo=dt.UTC))
        [record] = DepBackups(db, backup_dir, clock).run_due()
        container = json.loads(export_container(db, REGISTER))
    finally:
        db.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [NAME]
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.receipts == SALES + 1
    if where == "named":
        assert path.stat().st_ino == inode  # recorded as it was, not written again
    with path.open("rb") as handle:
        report = verify_dep(stream_dep(handle), container)
    assert report.ok, report.findings[:3]
    assert os.stat(path).st_mode & 0o222 == 0

"""A restore that did not finish is recorded (``restore.pending``): nothing opens the till
database meanwhile, the same restore finishes it, ``--abandon`` undoes it; and where a till
lived, a missing database is restored, never made anew (the crash review of restore;
tests/crash/test_restore_kill.py kills a real process at each step)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import agent.restore
from agent.errors import StorageError
from agent.receipts import ReceiptService
from factories import Run, expect, flat, sale
from storage import TillDB, open_till_db
from storage.db import DB_FILE, LOCK_FILE

RESTORE_MARKER = "restore.pending"
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


class _Killed(BaseException):
    """Stands in for a SIGKILL: nothing after it runs, no handler cleans up."""


def _backup(db: TillDB, target: Path) -> Path:
    source, copy = sqlite3.connect(db.path), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


def _numbers(data_dir: Path) -> list[int]:
    conn = sqlite3.connect(f"{(data_dir / DB_FILE).as_uri()}?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in conn.execute("SELECT number FROM receipts ORDER BY number")]
    finally:
        conn.close()


def _hashes(directory: Path) -> dict[str, str]:
    """The database's files there (not the -shm, which a reader rewrites) by SHA-256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob(f"{DB_FILE}*"))
        if not p.name.endswith("-shm")
    }


def _restore(run: Run, data_dir: Path, *args: str | Path, code: int) -> dict[str, Any]:
    result = expect(run("restore", *args, "--data-dir", data_dir, "--json"), code)
    return dict(json.loads(result.stdout))


@pytest.fixture(name="till")
def _till(service: ReceiptService, tmp_path: Path) -> dict[str, Path]:
    """KASSE-1 at receipt 4, killed (its files as a kill leaves them: 4 only in its -wal),
    a backup at 4 (``now``) and one at 3 (``older``)."""
    for request_id in ("a", "b"):
        service.issue(sale(request_id=request_id))
    older = _backup(service.db, tmp_path / "older.sqlite3")
    service.issue(sale(request_id="c"))
    now = _backup(service.db, tmp_path / "now.sqlite3")
    current = tmp_path / "current"
    current.mkdir(mode=0o700)
    for suffix in ("", "-wal", "-shm"):
        shutil.copy2(service.db.path.parent / f"{DB_FILE}{suffix}", current / f"{DB_FILE}{suffix}")
    return {"current": current, "now": now, "older": older}


def _killed_at(monkeypatch: pytest.MonkeyPatch, till: dict[str, Path], step: str) -> Path:
    """Run the restore of ``now`` into ``current``, stopped dead right before ``step``:
    ``rename-in`` (the copy given the database's name) or ``unmark`` (the marker removed)."""
    real = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst) == till["current"] / DB_FILE and step == "rename-in":
            raise _Killed
        real(src, dst, *args, **kwargs)

    def unmark(_: Path) -> None:
        raise _Killed

    with monkeypatch.context() as patched:
        patched.setattr(os, "rename", rename)
        if step == "unmark":
            patched.setattr(agent.restore, "remove_pending", unmark)
        with pytest.raises(_Killed):
            agent.restore.restore(till["now"], till["current"], confirmed=False, now=NOW)
    assert (till["current"] / RESTORE_MARKER).exists()
    return till["current"]


class TestPending:
    def test_nothing_opens_the_database_while_a_restore_is_pending(
        self, run: Run, till: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Killed with the old files moved aside and the copy not yet in: a writer that may
        create the database (`run`, `init`) gets exit 5 naming the marker, the backup to
        finish it with and --abandon, and creates nothing; readers are refused alike, and
        `config check` says so (exit 5, under "data directory:")."""
        data_dir = _killed_at(monkeypatch, till, "rename-in")
        assert not (data_dir / DB_FILE).exists()
        with pytest.raises(StorageError) as refused:
            open_till_db(data_dir)
        assert type(refused.value).__name__ == "RestorePending"
        said = str(refused.value)
        assert str(data_dir / RESTORE_MARKER) in said
        assert f"till-agent restore {till['now']} --data-dir {data_dir}" in said
        assert f"till-agent restore --abandon --data-dir {data_dir}" in said
        body = json.loads(
            expect(
                run("init", "KASSE-2", "--unit", "dev", "--data-dir", data_dir, "--json"), 5
            ).stdout
        )
        assert body["error"] == "RestorePending"
        listed = expect(
            run("receipts", "list", "--register", "KASSE-1", "--data-dir", data_dir, "--json"), 5
        )
        assert json.loads(listed.stdout)["error"] == "RestorePending"
        assert not (data_dir / DB_FILE).exists()
        config = tmp_path / "till.toml"
        config.write_text(f'data_dir = "{data_dir}"\n', encoding="utf-8")
        checked = expect(run("config", "check", "--config", config), 5)
        assert flat(checked.stderr).startswith(f"data directory: a restore into {data_dir}")
        assert "restore.pending" in flat(checked.stderr)
        assert "invalid configuration" not in checked.stderr

    def test_another_backup_is_refused_naming_the_pending_one(
        self, run: Run, till: dict[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An older backup after the kill: it is not compared with what is left of the old
        database; exit 5 naming the pending backup, nothing changed."""
        data_dir = _killed_at(monkeypatch, till, "rename-in")
        before = sorted(p.name for p in data_dir.rglob("*"))
        body = _restore(run, data_dir, till["older"], code=5)
        assert body["error"] == "RestorePending"
        assert f"a restore of {till['now']}" in body["message"]
        assert sorted(p.name for p in data_dir.rglob("*")) == before

    def test_the_same_backup_finishes_it_without_yes(
        self, run: Run, till: dict[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Run again, the restore goes on from the marker: its copy (not made again), the
        old files in the same replaced directory; a killed restore's copy from before is
        removed and named."""
        data_dir = _killed_at(monkeypatch, till, "rename-in")
        marker = json.loads((data_dir / RESTORE_MARKER).read_text(encoding="utf-8"))
        stale = data_dir / f".{DB_FILE}.0123456789ab.tmp"
        stale.write_bytes(b"an earlier copy")
        done = _restore(run, data_dir, till["now"], code=0)
        assert done["resumed"] is True
        assert done["journal_seq"] == marker["journal"]["seq"]
        assert done["replaced"] == str(data_dir / marker["replaced"])
        assert done["removed_leftovers"] == [stale.name]
        assert _numbers(data_dir) == [1, 2, 3, 4]
        [replaced] = data_dir.glob("replaced-*")
        assert _numbers(replaced) == [1, 2, 3, 4]
        assert sorted(p.name for p in data_dir.iterdir()) == sorted(
            [LOCK_FILE, DB_FILE, replaced.name]
        )

    def test_a_copy_that_is_gone_is_made_again(
        self, run: Run, till: dict[str, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The marker's copy removed by hand: the backup is copied and checked again, and
        journaled once."""
        data_dir = _killed_at(monkeypatch, till, "rename-in")
        marker = json.loads((data_dir / RESTORE_MARKER).read_text(encoding="utf-8"))
        (data_dir / marker["copy"]).unlink()
        done = _restore(run, data_dir, till["now"], code=0)
        assert done["resumed"] is True
        assert _numbers(data_dir) == [1, 2, 3, 4]
        conn = sqlite3.connect(data_dir / DB_FILE)
        try:
            kinds = [r[0] for r in conn.execute("SELECT kind FROM journal ORDER BY seq")]
        finally:
            conn.close()
        assert kinds.count("till.restored") == 1

    @pytest.mark.parametrize("step", ["rename-in", "unmark"])
    def test_abandon_puts_the_replaced_database_back(
        self, run: Run, till: dict[str, Path], monkeypatch: pytest.MonkeyPatch, step: str
    ) -> None:
        """--abandon: the old database and its -wal back as they were (its receipt 4 too),
        the copy removed, also when it had the database's name already; nothing of the
        restore left."""
        before = _hashes(till["current"])
        data_dir = _killed_at(monkeypatch, till, step)
        body = _restore(run, data_dir, "--abandon", code=0)
        assert body["removed_restored_copy"] is (step == "unmark")
        assert _hashes(data_dir) == before
        assert _numbers(data_dir) == [1, 2, 3, 4]
        assert sorted(p.name for p in data_dir.iterdir()) == sorted(
            [LOCK_FILE, DB_FILE, f"{DB_FILE}-shm", f"{DB_FILE}-wal"]
        )
        db = open_till_db(data_dir)
        db.close()
        assert _restore(run, data_dir, "--abandon", code=6)["error"] == "NotFound"

    def test_abandon_takes_no_backup(self, run: Run, till: dict[str, Path]) -> None:
        """--abandon with BACKUP_FILE: a usage error."""
        args = ("restore", till["now"], "--abandon", "--data-dir", till["current"])
        assert "--abandon takes no BACKUP_FILE" in flat(expect(run(*args), 2).stderr)


class TestLeftovers:
    def test_a_restore_removes_the_copies_killed_restores_left(
        self, run: Run, till: dict[str, Path]
    ) -> None:
        """Copies (they hold the registers' AES keys) and marker files of restores killed
        before their marker: removed at the next restore's start, and named."""
        data_dir = till["current"]
        left = [f".{DB_FILE}.0123456789ab.tmp", f".{DB_FILE}.0123456789ab.tmp-journal"]
        left.append(f".{RESTORE_MARKER}.ba9876543210.tmp")
        for name in left:
            (data_dir / name).write_bytes(b"left")
        done = _restore(run, data_dir, till["now"], code=0)
        assert done["removed_leftovers"] == sorted(left)
        assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]

    def test_a_refused_restore_leaves_a_stopped_database_as_it_was(
        self, run: Run, service: ReceiptService, tmp_path: Path
    ) -> None:
        """A cleanly stopped database (no -wal) and a backup behind it: refused, and no
        -wal or -shm was made beside the database by reading it."""
        older = _backup(service.db, tmp_path / "older.sqlite3")
        service.issue(sale(request_id="a"))
        data_dir = service.db.path.parent
        service.db.close()
        names = sorted(p.name for p in data_dir.iterdir())
        assert f"{DB_FILE}-wal" not in names
        assert _restore(run, data_dir, older, code=4)["error"] == "BackupBehind"
        assert sorted(p.name for p in data_dir.iterdir()) == names

"""``till-agent restore``: a backup goes back without a receipt number issued twice, without
a stale -wal replayed into it, owned by the service, with its open print jobs skipped and
the restore journaled (the operations review's F1-F4)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from agent.clock import FrozenClock
from agent.print_worker import PrintWorker
from agent.printing import FilePrinter
from agent.printing.transport import NetworkPrinter
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, expect, flat, sale
from storage import TillDB, open_till_db
from storage.db import DB_FILE, LOCK_FILE, make_engine
from storage.journal import verify_journal
from storage.migrate import downgrade_to, head_revision

NOBODY = 65534


def _sell(service: ReceiptService, *request_ids: str) -> list[int]:
    return [service.issue(sale(request_id=r)).number for r in request_ids]


def _backup(db: TillDB, target: Path) -> Path:
    """What README's ``sqlite3 till.sqlite3 ".backup FILE"`` makes, taken while it is open."""
    source, copy = sqlite3.connect(db.path), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


def _crash_image(data_dir: Path, target: Path) -> None:
    """The files of the open database as a kill leaves them: its last commits in the -wal."""
    target.mkdir(mode=0o700)
    for suffix in ("", "-wal", "-shm"):
        shutil.copy2(data_dir / f"{DB_FILE}{suffix}", target / f"{DB_FILE}{suffix}")


def _numbers(data_dir: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
    try:
        return [int(r[0]) for r in conn.execute("SELECT number FROM receipts ORDER BY number")]
    finally:
        conn.close()


def _files(data_dir: Path) -> dict[str, str]:
    """Every file under ``data_dir`` and its SHA-256; not the -shm (a reader rewrites it)
    nor the lock file (every command that may write takes it)."""
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm") and p.name != LOCK_FILE
    }


def _restore(run: Run, backup: Path, data_dir: Path, *extra: str, code: int = 0) -> dict[str, Any]:
    result = expect(run("restore", backup, "--data-dir", data_dir, "--json", *extra), code)
    return dict(json.loads(result.stdout))


@pytest.fixture(name="till")
def _till(service: ReceiptService, tmp_path: Path) -> tuple[ReceiptService, Path]:
    """KASSE-1 with receipts 1 (Startbeleg) to 3, backed up, then receipts 4 and 5."""
    _sell(service, "a", "b")
    backup = _backup(service.db, tmp_path / "backup.sqlite3")
    _sell(service, "c", "d")
    return service, backup


class TestRefused:
    def test_a_backup_behind_the_till_database_is_refused(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path
    ) -> None:
        """F1: the backup ends at 3, the till printed up to 5: restoring it would sign a new
        receipt 4. Refused (exit 4, --yes or not) naming the register and both numbers,
        nothing changed; the till's last commits count although they are still in its
        -wal."""
        service, backup = till
        current = tmp_path / "current"
        _crash_image(service.db.path.parent, current)
        assert (current / f"{DB_FILE}-wal").stat().st_size > 0
        before = _files(current)
        body = _restore(run, backup, current, code=4)
        assert body["error"] == "BackupBehind"
        assert body["registers"] == [
            {"register": "KASSE-1", "backup_number": 3, "current_number": 5}
        ]
        assert "the backup's last receipt is 3, the till database's 5" in body["message"]
        assert "on customers' paper" in body["message"]
        assert _restore(run, backup, current, "--yes", code=4)["registers"] == body["registers"]
        assert _files(current) == before
        assert not list(current.glob("replaced-*"))

    def test_without_a_database_the_operator_must_confirm(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path
    ) -> None:
        """A new machine: nothing shows how far the till got. Without --yes exit 3 showing
        the backup's last receipt and the way out (FinanzOnline, a new register); the data
        directory it would have made is not left behind."""
        _, backup = till
        target = tmp_path / "new"
        human = expect(run("restore", backup, "--data-dir", target), 3)
        said = flat(human.stderr)
        assert "--yes is needed" in said
        assert "KASSE-1 3 (Belegnummer 3, 2026-03-02T11:00:00, 16.70)" in said
        assert "FinanzOnline" in said
        assert "till-agent init NEW-ID" in said
        assert not target.exists()
        body = _restore(run, backup, target, code=3)
        assert (body["field"], body["rule"]) == ("--yes", "confirm")
        assert body["registers"][0]["number"] == 3
        done = _restore(run, backup, target, "--yes")
        assert done["confirmed_by_operator"] is True
        assert done["replaced"] is None
        assert _numbers(target) == [1, 2, 3]

    def test_a_database_of_another_till_needs_yes(
        self,
        run: Run,
        till: tuple[ReceiptService, Path],
        tmp_path: Path,
        registry: UnitRegistry,
        unit_config: UnitConfig,
        clock: FrozenClock,
    ) -> None:
        """A service started before the restore made its own KASSE-1 (another Startbeleg):
        not ahead of the backup, but it vouches for nothing."""
        _, backup = till
        fresh = tmp_path / "fresh"
        db = open_till_db(fresh)
        try:
            add_unit(db, registry, unit_config)
            ReceiptService(db, registry, clock=clock).init_register(
                RegisterSetup("KASSE-1", ["dev"])
            )
        finally:
            db.close()
        body = _restore(run, backup, fresh, code=3)
        assert "is not the backup's till" in body["message"]
        done = _restore(run, backup, fresh, "--yes")
        assert done["replaced_last_numbers"] == {"KASSE-1": 1}
        assert _numbers(fresh) == [1, 2, 3]

    @pytest.mark.parametrize("damage", ["page", "page-type", "journal", "revision"])
    def test_a_damaged_or_later_backup_is_refused(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path, damage: str
    ) -> None:
        """Damaged pages, a journal whose hash chain is broken, a later version's schema:
        refused (exit 5) before the data directory is touched."""
        _, backup = till
        _damage(backup, damage)
        target = tmp_path / "new"
        target.mkdir()
        body = _restore(run, backup, target, "--yes", code=5)
        assert body["error"] == "StorageError"
        expected = {
            "page": "it is damaged: PRAGMA integrity_check",
            "page-type": "it is damaged: PRAGMA integrity_check stopped",
            "journal": "hash chain",
            "revision": "'9999'",
        }
        assert expected[damage] in body["message"]
        assert sorted(p.name for p in target.iterdir()) == [LOCK_FILE]

    def test_a_copy_of_an_open_database_is_no_backup(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path
    ) -> None:
        """A till.sqlite3 copied with its -wal: its last commits are in the -wal, which a
        restore of the file alone would lose."""
        service, _ = till
        image = tmp_path / "image"
        _crash_image(service.db.path.parent, image)
        body = _restore(run, image / DB_FILE, tmp_path / "new", "--yes", code=3)
        assert body["rule"] == "wal-beside"


def _damage(backup: Path, how: str) -> None:
    conn = sqlite3.connect(backup, isolation_level=None)
    try:
        if how == "journal":  # as an editor would: past the append-only trigger
            conn.execute("DROP TRIGGER journal_no_update")
            conn.execute("UPDATE journal SET data = '{}' WHERE seq = 2")
        elif how == "revision":
            conn.execute("UPDATE alembic_version SET version_num = '9999'")
        else:  # page, page-type
            (root,) = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'receipts'"
            ).fetchone()
            size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    if how == "page":  # its cell pointers: integrity_check lists the damage, or stops at it
        with backup.open("r+b") as handle:
            handle.seek((root - 1) * size + 8)
            handle.write(b"\xff" * 64)
    elif how == "page-type":  # no b-tree page at all: integrity_check stops at it
        with backup.open("r+b") as handle:
            handle.seek((root - 1) * size)
            handle.write(b"\xff")


class TestRestored:
    def test_a_stale_wal_is_moved_aside_not_replayed(
        self,
        run: Run,
        till: tuple[ReceiptService, Path],
        tmp_path: Path,
        registry: UnitRegistry,
        clock: FrozenClock,
    ) -> None:
        """F2: a killed service's -wal holds receipts 4 and 5 (and, no checkpoint yet, the
        rest of its database), its till.sqlite3 is lost. Copied in beside it (the README's
        old steps) the backup gets 4 and 5 back from that -wal; the restore moves the -wal
        and -shm aside first, so the till holds the backup's receipts exactly and the next
        receipt is 4."""
        service, backup = till
        naive = tmp_path / "naive"
        _crash_image(service.db.path.parent, naive)
        shutil.copy(backup, naive / DB_FILE)
        assert _numbers(naive) == [1, 2, 3, 4, 5]  # what the old README steps gave
        dead = tmp_path / "dead"
        _crash_image(service.db.path.parent, dead)
        (dead / DB_FILE).unlink()
        wal = (dead / f"{DB_FILE}-wal").read_bytes()

        done = _restore(run, backup, dead, "--yes")
        assert done["replaced_unreadable"] == (
            "there is no till.sqlite3, only its -wal (moved aside too)"
        )
        kept = Path(done["replaced"])
        assert kept.parent == dead
        assert (kept / f"{DB_FILE}-wal").read_bytes() == wal
        assert sorted(p.name for p in kept.iterdir()) == [f"{DB_FILE}-shm", f"{DB_FILE}-wal"]
        assert not (dead / f"{DB_FILE}-wal").exists()
        assert _numbers(dead) == [1, 2, 3]

        db = open_till_db(dead)
        try:
            restored = ReceiptService(db, registry, clock=clock)
            assert _sell(restored, "after") == [4]
        finally:
            db.close()
        assert _numbers(dead) == [1, 2, 3, 4]

    def test_a_backup_as_recent_as_the_till_replaces_it_without_yes(
        self, run: Run, service: ReceiptService, tmp_path: Path
    ) -> None:
        """The current database (its -wal included) ends where the backup does: it vouches
        for the backup. Its files are kept in replaced-<time>/, with their journal events
        after the backup's named."""
        _sell(service, "a")
        backup = _backup(service.db, tmp_path / "backup.sqlite3")
        current = tmp_path / "current"
        _crash_image(service.db.path.parent, current)
        done = _restore(run, backup, current)
        assert done["confirmed_by_operator"] is False
        assert done["replaced_last_numbers"] == {"KASSE-1": 2}
        assert done["replaced_events_left_behind"] is None
        assert _numbers(current) == [1, 2]

    def test_the_restore_is_journaled_and_the_chain_holds(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path
    ) -> None:
        """``till.restored`` names the backup (file, SHA-256) and the last numbers; the
        journal's hash chain is intact after it."""
        _, backup = till
        target = tmp_path / "new"
        done = _restore(run, backup, target, "--yes")
        digest = hashlib.sha256(backup.read_bytes()).hexdigest()
        assert done["backup"]["sha256"] == digest
        engine = create_engine(f"sqlite:///{target / DB_FILE}")
        try:
            with engine.connect() as conn:
                assert verify_journal(conn) == []
                kind, data, seq = conn.exec_driver_sql(
                    "SELECT kind, data, seq FROM journal ORDER BY seq DESC LIMIT 1"
                ).one()
        finally:
            engine.dispose()
        assert (kind, seq) == ("till.restored", done["journal_seq"])
        event = json.loads(data)
        assert event["backup"]["sha256"] == digest
        assert event["backup"]["file"] == "backup.sqlite3"
        assert event["last_numbers"] == {"KASSE-1": 3}
        assert event["confirmed_by_operator"] is True

    def test_an_older_schema_is_restored_and_migrated_at_start(
        self, run: Run, till: tuple[ReceiptService, Path], tmp_path: Path
    ) -> None:
        """A backup made by an earlier version: restored as it is, said to be migrated when
        the service starts, and then it is."""
        _, backup = till
        engine = make_engine(backup)
        try:
            downgrade_to(engine, "0009")
        finally:
            engine.dispose()
        target = tmp_path / "new"
        done = _restore(run, backup, target, "--yes")
        assert (done["schema_revision"], done["migrates_on_start"]) == ("0009", True)
        open_till_db(target).close()  # what the service does at start
        conn = sqlite3.connect(target / DB_FILE)
        try:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
                head_revision(),
            )
        finally:
            conn.close()


@pytest.fixture(name="refusing_port")
def _refusing_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class TestPrintJobs:
    def test_the_backups_open_print_jobs_are_not_printed_again(
        self,
        run: Run,
        service: ReceiptService,
        tmp_path: Path,
        refusing_port: int,
        registry: UnitRegistry,
        clock: FrozenClock,
    ) -> None:
        """F3: the backup holds receipt 2's failed job, 3 and 4 queued and 5 without a job
        yet. The restored till prints none of them as an original (the old till did); they
        are named, and a reprint prints a copy."""
        worker = PrintWorker(service, NetworkPrinter("127.0.0.1", refusing_port, timeout=1.0))
        _sell(service, "a", "b", "c")
        assert worker.run_once() == 0  # 2 failed, 3 and 4 queued
        _sell(service, "d")
        backup = _backup(service.db, tmp_path / "backup.sqlite3")
        target = tmp_path / "new"
        done = _restore(run, backup, target, "--yes")
        assert [(j["number"], j["was"]) for j in done["skipped_prints"]] == [
            (2, "failed"),
            (3, "queued"),
            (4, "queued"),
            (5, "no job"),
        ]
        human = expect(run("restore", backup, "--data-dir", tmp_path / "other", "--yes"), 0)
        assert "KASSE-1 2-5" in flat(human.stdout)

        db = open_till_db(target)
        try:
            restored = ReceiptService(db, registry, clock=clock)
            prints = tmp_path / "prints"
            printing = PrintWorker(restored, FilePrinter(prints))
            assert printing.run_once() == 0
            assert printing.reprint("KASSE-1", 3) == 1
            assert printing.run_once() == 1
        finally:
            db.close()
        assert len(list(prints.glob("*.bin"))) == 1


@pytest.fixture(name="service_dir")
def _service_dir() -> Iterator[Path]:
    """A directory the service user (nobody here) can reach: pytest's tmp_path is 0700."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    base = Path("/tmp") / f"till-restore-{os.getpid()}"
    base.mkdir(mode=0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


class TestOwner:
    def test_a_root_restore_gives_the_database_to_the_service_user(
        self, run: Run, till: tuple[ReceiptService, Path], service_dir: Path
    ) -> None:
        """F4: restored by root into the service user's directory, the database (0600), the
        lock file and replaced-<time>/ are the service user's, who can write the database."""
        _, backup = till
        data_dir = service_dir / "data"
        data_dir.mkdir(mode=0o700)
        (data_dir / LOCK_FILE).touch()  # left by an earlier root command
        (data_dir / DB_FILE).write_bytes(b"")
        for path in (data_dir, data_dir / DB_FILE):
            os.chown(path, NOBODY, NOBODY)
        done = _restore(run, backup, data_dir, "--yes")
        for path in (data_dir / DB_FILE, data_dir / LOCK_FILE, Path(done["replaced"])):
            found = path.stat()
            assert (found.st_uid, found.st_gid) == (NOBODY, NOBODY), path
        assert (data_dir / DB_FILE).stat().st_mode & 0o777 == 0o600
        if shutil.which("sqlite3") is None:
            pytest.skip("no sqlite3 command line to write as the service user")
        wrote = subprocess.run(
            [
                "sqlite3",
                data_dir / DB_FILE,
                "PRAGMA journal_mode=WAL; BEGIN IMMEDIATE; CREATE TABLE probe(x); ROLLBACK;",
            ],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
        )
        assert wrote.returncode == 0, wrote.stderr

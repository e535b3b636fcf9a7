"""The quarterly DEP backups (agent/backup.py; § 7 Abs 3 RKSV): which quarters, what is
written and recorded, failures, and what the status shows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import UNIT

from agent import backup as backup_module
from agent import durable
from agent import registers as registers_module
from agent.api_backend import ServiceBackend
from agent.at_rksv.dep import stream_dep
from agent.at_rksv.verify import verify_dep
from agent.backup import BackupRecord, DepBackups, Quarter, medium_name
from agent.clock import FrozenClock
from agent.errors import BackupFailed, InvalidSale, NotFound
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService, RegisterSetup
from factories import db_rows, journal_events, sale

REGISTER = "KASSE-1"
VIENNA = ZoneInfo("Europe/Vienna")
Q1_ENDS = dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC)  # 1 April 00:00 in Vienna (CEST)


@pytest.fixture(name="umask_022", autouse=True)
def _umask_022() -> Iterator[None]:
    """The usual umask, so a file created 0444 is 0444."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(name="backup_dir")
def _backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture(name="backups")
def _backups(service: ReceiptService, backup_dir: Path, clock: FrozenClock) -> DepBackups:
    """The backup job of the till holding KASSE-1 (created 2026-03-02, mid-Q1)."""
    return DepBackups(service.db, backup_dir, clock)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbers(service: ReceiptService, path: Path) -> list[int]:
    """The numbers of the receipts in a DEP file, in its order."""
    numbers = {
        r["jws"]: r["number"] for r in db_rows(service.db, "SELECT jws, number FROM receipts")
    }
    with path.open("rb") as handle:
        return [numbers[jws] for _group, jws in stream_dep(handle)]


class TestQuarter:
    def test_parses_and_prints_the_form_2026_q3(self) -> None:
        """The form the option and the file names use, exactly: no final newline, no digits
        of another script (a pattern with \\d and $ would take both)."""
        assert Quarter.parse("2026-Q3") == Quarter(2026, 3)
        assert str(Quarter(2026, 3)) == "2026-Q3"
        for bad in (
            "2026-Q5",
            "2026Q3",
            "26-Q1",
            "2026-q1",
            "",
            "2026-Q3\n",
            "\u0662\u0660\u0662\u0666-Q3",
        ):
            with pytest.raises(ValueError, match="YYYY-Qn"):
                Quarter.parse(bad)

    def test_days_neighbours_and_end_in_vienna(self) -> None:
        """A quarter ends at local midnight after its last day: for Q1 2026 that is 22:00
        UTC on 31 March (summer time began on 29 March)."""
        q1 = Quarter.of(dt.date(2026, 3, 31))
        assert (q1.first_day, q1.last_day) == (dt.date(2026, 1, 1), dt.date(2026, 3, 31))
        assert q1.ends_at(VIENNA) == Q1_ENDS
        assert Quarter(2026, 4).next() == Quarter(2027, 1)
        assert Quarter(2027, 1).previous() == Quarter(2026, 4)
        assert Quarter(2026, 4).last_day == dt.date(2026, 12, 31)


class TestWhatIsBackedUp:
    def test_nothing_is_due_before_the_quarter_ends_in_the_register_time_zone(
        self, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """At 23:59 local on 31 March (21:59 UTC) Q1 has not ended; a register created
        mid-quarter gets its first backup at that quarter's end, not before."""
        clock.set(Q1_ENDS - dt.timedelta(minutes=1))
        assert backups.run_due() == []
        assert not backup_dir.exists()

    def test_a_quarter_is_taken_only_after_the_grace_period_past_its_end(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """A sale stamped 23:59:59 on 31 March may still be signing (up to the sign
        deadline, 60 s at most) at 00:00:01: Q1 is not written, by the job or by hand,
        until QUARTER_GRACE after midnight, and then holds that sale."""
        assert dt.timedelta(seconds=60) * 4 < backup_module.QUARTER_GRACE
        clock.set(Q1_ENDS - dt.timedelta(seconds=1))
        last = service.issue(sale(request_id="last-second")).number
        clock.set(Q1_ENDS + dt.timedelta(seconds=1))
        assert backups.run_due() == []
        with pytest.raises(InvalidSale, match="has not ended") as refused:
            backups.run_quarter(REGISTER, Quarter(2026, 1))
        assert refused.value.rule == "quarter-not-ended"
        clock.set(Q1_ENDS + backup_module.QUARTER_GRACE)
        [record] = backups.run_due()
        assert (record.quarter, record.last_number) == ("2026-Q1", last)

    def test_a_receipt_at_2330_local_on_31_march_is_in_q1(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """Receipts count by their local date: 23:30 on 31 March (21:30 UTC) is in Q1,
        00:30 on 1 April (22:30 UTC on 31 March) is not."""
        clock.set(Q1_ENDS - dt.timedelta(minutes=30))
        in_q1 = service.issue(sale(request_id="late")).number
        clock.set(Q1_ENDS + dt.timedelta(minutes=30))
        service.issue(sale(request_id="april"))
        [record] = backups.run_due()
        assert record.quarter == "2026-Q1"
        assert (record.receipts, record.last_number) == (2, in_q1)
        assert _numbers(service, Path(record.path)) == [1, in_q1]

    def test_several_quarters_are_caught_up_oldest_first_each_from_the_first_receipt(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """A till that was off catches up every ended quarter in order; each backup is the
        whole DEP from the Startbeleg to the quarter's last day."""
        for day in ("2026-05-10", "2026-08-20", "2026-11-02"):
            clock.set(dt.datetime.fromisoformat(f"{day}T10:00:00+00:00"))
            service.issue(sale(request_id=day))
        clock.set(dt.datetime(2027, 1, 5, 10, 0, tzinfo=dt.UTC))
        records = backups.run_due()
        assert [r.quarter for r in records] == ["2026-Q1", "2026-Q2", "2026-Q3", "2026-Q4"]
        # each sale came after the closings of the months before it (Q2: March, April)
        assert [(r.receipts, r.last_number) for r in records] == [(1, 1), (4, 4), (8, 8), (12, 12)]
        assert [_numbers(service, Path(r.path)) for r in records][-1] == list(range(1, 13))
        expected = backup_dir / REGISTER / f"{REGISTER}_2026-Q2.dep.json"
        assert records[1].path == str(expected)
        events = journal_events(service.db, "dep.backup")
        assert [e["quarter"] for e in events] == ["2026-Q1", "2026-Q2", "2026-Q3", "2026-Q4"]

    def test_each_register_has_its_own_due_quarters(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """KASSE-1's backup of Q1 does not count for KASSE-2 (created the same day): the
        run writes KASSE-2's Q1, and both registers' Q2."""
        service.init_register(RegisterSetup("KASSE-2", [UNIT]))
        clock.set(dt.datetime(2026, 7, 2, tzinfo=dt.UTC))
        backups.run_quarter(REGISTER, Quarter(2026, 1))
        written = [(r.register, r.quarter) for r in backups.run_due()]
        assert written == [(REGISTER, "2026-Q2"), ("KASSE-2", "2026-Q1"), ("KASSE-2", "2026-Q2")]

    def test_a_file_is_written_once_read_only_and_recorded_with_its_hash(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """The record and its journal event name the file and its SHA-256; a second run
        writes nothing (the file keeps its inode)."""
        clock.set(Q1_ENDS + dt.timedelta(days=1))
        [record] = backups.run_due()
        path = Path(record.path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert record.sha256 == _sha256(path)
        inode = path.stat().st_ino
        assert backups.run_due() == []
        assert path.stat().st_ino == inode
        [row] = db_rows(service.db, "SELECT * FROM dep_backups")
        assert BackupRecord(*row) == record
        [event] = journal_events(service.db, "dep.backup")
        assert event == {
            "quarter": "2026-Q1",
            "path": record.path,
            "sha256": record.sha256,
            "receipts": 1,
            "last_number": 1,
            "written_at": record.written_at,
        }
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp left

    def test_the_backup_verifies_with_the_crypto_container(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """Each backup is a complete DEP export: the verifier accepts it on its own."""
        for n in range(3):
            service.issue(sale(request_id=f"r{n}"))
        clock.set(dt.datetime(2026, 4, 1, 8, 0, tzinfo=dt.UTC))
        [record] = backups.run_due()
        container = json.loads(export_container(service.db, REGISTER))
        with Path(record.path).open("rb") as handle:
            report = verify_dep(stream_dep(handle), container)
        assert report.ok, report.findings
        assert record.receipts == 4

    def test_the_record_describes_the_file_not_receipts_committed_after_its_export(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A receipt dated in the quarter that commits after the export read its snapshot
        is not in the file: the record and its journal event give the file's count and its
        last number, not the receipt that came after."""
        export = backup_module.export_dep

        def then_a_late_receipt(*args: Any, **kwargs: Any) -> int:
            count = export(*args, **kwargs)
            now = clock.now()
            clock.set(Q1_ENDS - dt.timedelta(seconds=1))
            service.issue(sale(request_id="in-flight"))
            clock.set(now)
            return count

        monkeypatch.setattr(backup_module, "export_dep", then_a_late_receipt)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        assert _numbers(service, Path(record.path)) == [1]
        assert (record.receipts, record.last_number) == (1, 1)
        [event] = journal_events(service.db, "dep.backup")
        assert (event["receipts"], event["last_number"]) == (1, 1)

    def test_a_register_closed_by_its_schlussbeleg_gets_one_final_backup(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """Its DEP is final with the Schlussbeleg: that quarter is backed up at once, and
        no later quarter ever is."""
        clock.set(dt.datetime(2026, 5, 10, 10, 0, tzinfo=dt.UTC))
        closing = service.issue_special(REGISTER, "closing").number
        records = backups.run_due()
        assert [(r.quarter, r.last_number) for r in records] == [
            ("2026-Q1", 1),
            ("2026-Q2", closing),
        ]
        clock.set(dt.datetime(2027, 6, 1, tzinfo=dt.UTC))
        assert backups.run_due() == []
        with pytest.raises(InvalidSale, match="Schlussbeleg") as refused:
            backups.run_quarter(REGISTER, Quarter(2026, 3))
        assert (refused.value.field, refused.value.rule) == ("quarter", "after-schlussbeleg")


class TestNames:
    def test_a_kassen_id_names_its_directory_on_fat_and_exfat(self) -> None:
        """':' and each final '.' are written as in a URL, and the first letter of a Windows
        device name; the rest is kept, so the usual Kassen-ID is its own name. '%' is not
        in a Kassen-ID: decoding gives it back, so no two registers get one name."""
        cases = {
            "KASSE-1": "KASSE-1",
            "AT:U12345678:K1": "AT%3AU12345678%3AK1",
            "K1.": "K1%2E",
            "...": "%2E%2E%2E",
            ".k.1": ".k.1",
            "a:.": "a%3A%2E",
            "CON": "%43ON",
            "nul.K1": "%6Eul.K1",
            "COM9": "%43OM9",
            "LPT1.": "LPT1%2E",  # no device name once its dot is written %2E
            "lpt1.x": "%6Cpt1.x",
            "CONSOLE": "CONSOLE",
            "COM10": "COM10",
            "K1.CON": "K1.CON",
        }
        assert {register: medium_name(register) for register in cases} == cases
        for register in (*cases, "a.", "a:", "A-b.c:d", ":" * 64, "." * 64, "aux", "Prn.x"):
            name = medium_name(register)
            assert ":" not in name
            assert not name.endswith(".")
            assert urllib.parse.unquote(name) == register

    def test_a_register_backed_up_under_its_kassen_id_before_stays_there(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """An upgraded till whose register AT:K1 has its directory named AT:K1 (a Linux
        file system): the file a killed run left there without a record is found and
        recorded, and later quarters go beside it; a register without such a directory
        gets the new name."""
        service.init_register(RegisterSetup("AT:K1", [UNIT]))
        service.init_register(RegisterSetup("AT:K2", [UNIT]))
        old = backup_dir / "AT:K1" / "AT:K1_2026-Q1.dep.json"
        old.parent.mkdir(parents=True)
        with old.open("wb") as handle:
            export_dep(service.db, "AT:K1", handle, end=dt.date(2026, 3, 31))
        inode = old.stat().st_ino
        clock.set(dt.datetime(2026, 7, 2, tzinfo=dt.UTC))
        paths = {(r.register, r.quarter): r.path for r in backups.run_due()}
        assert paths[("AT:K1", "2026-Q1")] == str(old)
        assert old.stat().st_ino == inode
        assert paths[("AT:K1", "2026-Q2")] == str(old.with_name("AT:K1_2026-Q2.dep.json"))
        new = backup_dir / "AT%3AK2" / "AT%3AK2_2026-Q2.dep.json"
        assert paths[("AT:K2", "2026-Q2")] == str(new)
        assert sorted(os.listdir(backup_dir)) == ["AT%3AK2", "AT:K1", REGISTER]


class TestRunQuarter:
    def test_an_ended_quarter_is_written_once(
        self, backups: DepBackups, clock: FrozenClock
    ) -> None:
        """Asked twice, the second answer is the recorded backup (written: False)."""
        clock.set(dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
        first, written = backups.run_quarter(REGISTER, Quarter(2026, 2))
        assert written
        assert first.quarter == "2026-Q2"
        again, written = backups.run_quarter(REGISTER, Quarter(2026, 2))
        assert (again, written) == (first, False)

    @pytest.mark.parametrize(
        ("quarter", "rule", "words"),
        [
            (Quarter(2026, 4), "quarter-not-ended", "2026-Q4 has not ended"),
            (Quarter(2025, 4), "quarter-before-register", "receipts from 2026-03-02 on"),
        ],
    )
    def test_a_quarter_not_ended_or_before_the_register_is_refused(
        self, backups: DepBackups, clock: FrozenClock, quarter: Quarter, rule: str, words: str
    ) -> None:
        """Nothing is written for a quarter that can still change or never had receipts."""
        clock.set(dt.datetime(2026, 12, 31, 22, 59, tzinfo=dt.UTC))  # 23:59 in Vienna
        with pytest.raises(InvalidSale, match=words) as refused:
            backups.run_quarter(REGISTER, quarter)
        assert (refused.value.field, refused.value.rule) == ("quarter", rule)
        assert not backups.directory.exists()

    def test_an_unknown_register_is_not_found(self, backups: DepBackups) -> None:
        with pytest.raises(NotFound, match="NOPE"):
            backups.run_quarter("NOPE", Quarter(2026, 1))


class TestAlongsideReceipts:
    def test_receipts_are_issued_while_a_backup_is_being_written(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The export reads a snapshot, not through the write connection: with a backup
        held in the middle of its file, a sale is issued and committed at once."""
        held, release = threading.Event(), threading.Event()
        export = backup_module.export_dep

        def held_export(*args: Any, **kwargs: Any) -> int:
            def on_receipt() -> None:
                held.set()
                assert release.wait(30)

            return export(*args, on_receipt=on_receipt, **kwargs)

        monkeypatch.setattr(backup_module, "export_dep", held_export)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        worker = threading.Thread(target=backups.run_due)
        worker.start()
        try:
            assert held.wait(30)
            started = time.monotonic()
            # (after March's Monatsbeleg, which the first sale of April issues first)
            assert service.issue(sale(request_id="during")).number == 3
            assert time.monotonic() - started < 1.0
        finally:
            release.set()
            worker.join(30)
        [row] = db_rows(service.db, "SELECT quarter, receipts FROM dep_backups")
        assert tuple(row) == ("2026-Q1", 1)

    def test_a_stopped_job_abandons_its_backup(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """The service stops: no file, no temporary file, no record; the next start
        writes it."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        backups.stop()
        assert backups.run_due() == []
        assert list((backup_dir / REGISTER).iterdir()) == []
        assert db_rows(service.db, "SELECT * FROM dep_backups") == []
        [record] = DepBackups(service.db, backup_dir, clock).run_due()
        assert record.quarter == "2026-Q1"


class TestCrashLeftovers:
    def test_a_complete_file_without_its_record_is_recorded_not_rewritten(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """A run killed after the file got its name: the next run records that file (it is
        the quarter's export byte for byte) and leaves it as it is."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        with path.open("wb") as handle:
            export_dep(service.db, REGISTER, handle, end=dt.date(2026, 3, 31))
        inode = path.stat().st_ino
        [record] = backups.run_due()
        assert record.sha256 == _sha256(path)
        assert path.stat().st_ino == inode

    def test_an_adopted_file_is_made_durable_before_its_record(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The run that named it may have died before the name (on vfat: its size and
        clusters) reached the disk: the file and its directory are fsynced before the
        record is committed."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        with path.open("wb") as handle:
            export_dep(service.db, REGISTER, handle, end=dt.date(2026, 3, 31))
        steps: list[str] = []
        fsync = os.fsync

        def synced(fd: int) -> None:
            fsync(fd)
            if os.fstat(fd).st_ino in (path.stat().st_ino, path.parent.stat().st_ino):
                recorded = db_rows(service.db, "SELECT count(*) FROM dep_backups")[0][0]
                steps.append(
                    f"{'directory' if stat.S_ISDIR(os.fstat(fd).st_mode) else 'file'}"
                    f" with {recorded} records"
                )

        monkeypatch.setattr(os, "fsync", synced)
        [record] = backups.run_due()
        assert record.path == str(path)
        assert steps == ["file with 0 records", "directory with 0 records"]

    def test_another_file_under_the_name_is_refused_and_kept(
        self, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """Never overwritten: a foreign file there is a failure naming it."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        with pytest.raises(BackupFailed, match="not this quarter's DEP export"):
            backups.run_due()
        assert path.read_text() == "{}"

    @pytest.fixture(name="exports")
    def _exports(self, monkeypatch: pytest.MonkeyPatch) -> list[dt.date]:
        """The last day of each DEP export the backups make (each one still runs)."""
        exports: list[dt.date] = []
        export = backup_module.export_dep

        def counted(*args: Any, **kwargs: Any) -> int:
            exports.append(kwargs["end"])
            return export(*args, **kwargs)

        monkeypatch.setattr(backup_module, "export_dep", counted)
        return exports

    def test_a_refused_file_is_not_exported_again_until_it_changes(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
        exports: list[dt.date],
    ) -> None:
        """Refusing a foreign file takes a whole export to compare it with: the next runs
        (the service's, a minute apart) refuse the unchanged file without another, and
        journal nothing more; once the file there is the quarter's export (written over
        in place), it is compared again and recorded."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        for _ in range(3):
            with pytest.raises(BackupFailed, match="not this quarter's DEP export"):
                backups.run_due()
        assert exports == [dt.date(2026, 3, 31)]
        assert len(journal_events(service.db, "dep.backup_failed")) == 1
        with path.open("wb") as handle:
            export_dep(service.db, REGISTER, handle, end=dt.date(2026, 3, 31))
        [record] = backups.run_due()
        assert len(exports) == 2
        assert record.sha256 == _sha256(path)

    def test_a_refused_file_replaced_or_removed_is_seen(
        self,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
        exports: list[dt.date],
    ) -> None:
        """Another foreign file put in its place, even of the same size and time, is
        compared anew (and refused); once the name is free the backup is written."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        with pytest.raises(BackupFailed):
            backups.run_due()
        times = path.stat()
        other = path.with_name("other")
        other.write_text("[]")
        os.utime(other, ns=(times.st_atime_ns, times.st_mtime_ns))
        other.replace(path)
        with pytest.raises(BackupFailed):
            backups.run_due()
        assert len(exports) == 2
        path.unlink()
        [record] = backups.run_due()
        assert (len(exports), record.sha256) == (3, _sha256(path))

    def test_a_fifo_under_the_name_is_refused_not_read(
        self, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """Reading a fifo would block the backup job for good: it is a failure naming it
        (once: the error's own file name is the path said already)."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        os.mkfifo(path)
        with pytest.raises(BackupFailed) as refused:
            backups.run_due()
        assert refused.value.reason == (
            f"cannot write {path}: it is a fifo (named pipe), not a regular file"
        )
        assert stat.S_ISFIFO(path.lstat().st_mode)

    def test_every_directory_it_makes_is_durable_before_the_record(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The new [backup] dir and the register's directory in it have their names
        fsynced in their parents (agent.durable.make_directories) while nothing is
        recorded yet, so no power cut leaves a record whose file has no path."""
        synced: list[tuple[Path, int]] = []
        fsync_directory = durable.fsync_directory

        def recorded(directory: Path) -> None:
            fsync_directory(directory)
            records = db_rows(service.db, "SELECT count(*) FROM dep_backups")[0][0]
            synced.append((directory, records))

        monkeypatch.setattr(durable, "fsync_directory", recorded)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        backups.run_due()
        assert synced[:2] == [(backup_dir.parent, 0), (backup_dir, 0)]

    def test_temporary_files_of_a_killed_writer_are_removed(
        self, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """A writer killed mid-file leaves a dot-temp file; the next run removes it."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        stale = backup_dir / REGISTER / f".{REGISTER}_2026-Q1.dep.json.0123456789ab.tmp"
        stale.parent.mkdir(parents=True)
        stale.write_text('{\n  "Belege-Gruppe": [')
        backups.run_due()
        assert not stale.exists()


class TestFailures:
    def test_a_failure_is_journaled_once_retried_and_cleared_by_success(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """The backup directory cannot be made (a file is in its way): each run fails
        with the path, one ``dep.backup_failed`` event for the run of failures; once the
        way is clear the next run writes the backup and the failure is gone."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        backup_dir.write_text("not a directory")
        for _ in range(3):
            with pytest.raises(BackupFailed, match=f"cannot write {backup_dir}"):
                backups.run_due()
        [event] = journal_events(service.db, "dep.backup_failed")
        assert event["quarter"] == "2026-Q1"
        assert "not a directory" in str(event["error"])
        assert backups.failures[REGISTER].quarter == "2026-Q1"
        backup_dir.unlink()
        [record] = backups.run_due()
        assert record.quarter == "2026-Q1"
        assert REGISTER not in backups.failures
        assert len(journal_events(service.db, "dep.backup_failed")) == 1
        assert db_rows(service.db, "SELECT count(*) FROM dep_backups")[0][0] == 1

    def test_each_failure_names_each_path_once(
        self, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """The backup's path, then the directory that could not be made; a failure on the
        backup's own name (here its temporary file's: the register's "directory" is a
        file) names no hidden temporary name and no path twice."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        path = backup_dir / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        backup_dir.write_text("not a directory")
        with pytest.raises(BackupFailed) as failed:
            backups.run_due()
        assert failed.value.reason == f"cannot write {path}: {path.parent}: not a directory"
        backup_dir.unlink()
        backup_dir.mkdir()
        path.parent.write_text("not a directory")
        with pytest.raises(BackupFailed) as failed:
            backups.run_due()
        assert failed.value.reason == f"cannot write {path}: not a directory"

    def test_a_new_run_of_failures_is_journaled_again(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """Once per run of failures, not once ever."""
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        backup_dir.write_text("x")
        with pytest.raises(BackupFailed):
            backups.run_due()
        backup_dir.unlink()
        backups.run_due()
        clock.set(dt.datetime(2026, 7, 2, tzinfo=dt.UTC))
        backup_dir.rename(backup_dir.with_name("moved"))
        backup_dir.write_text("x")
        with pytest.raises(BackupFailed):
            backups.run_due()
        quarters = [e["quarter"] for e in journal_events(service.db, "dep.backup_failed")]
        assert quarters == ["2026-Q1", "2026-Q2"]

    def test_a_register_named_dot_dot_is_never_written_beside_the_directory(
        self,
        service: ReceiptService,
        backups: DepBackups,
        clock: FrozenClock,
        backup_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A Kassen-ID '..' (init refuses it now; an earlier init let it in) would put its
        backup into the parent of [backup] dir: it fails instead, and the other registers
        are backed up."""
        monkeypatch.setattr(registers_module, "is_register_id", lambda _value: True)
        service.init_register(RegisterSetup("..", [UNIT]))
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        with pytest.raises(BackupFailed, match="cannot name a backup directory"):
            backups.run_due()
        assert [p.name for p in backup_dir.parent.iterdir() if p.name.startswith("..")] == []
        assert backups.failures[".."].quarter == "2026-Q1"
        assert [r[0] for r in db_rows(service.db, "SELECT register_id FROM dep_backups")] == [
            REGISTER
        ]

    @pytest.fixture(name="medium")
    def _medium(self, tmp_path: Path) -> Iterator[Path]:
        """An external disk: a directory on tmpfs (/dev/shm), another file system than
        the test's, mounted at ``tmp_path / "usb"`` (a symlink to it)."""
        if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:  # pragma: no cover
            pytest.skip("needs /dev/shm on another file system than the test directory")
        medium = Path(tempfile.mkdtemp(dir="/dev/shm"))
        (tmp_path / "usb").symlink_to(medium)
        try:
            yield medium
        finally:
            shutil.rmtree(medium)

    def test_an_external_disk_that_went_away_is_not_replaced_by_the_tills_own(
        self, service: ReceiptService, clock: FrozenClock, tmp_path: Path, medium: Path
    ) -> None:
        """[backup] dir was on another file system at start (here tmpfs); when the path
        leads to the till's own disk later (an unmounted medium leaves its mount point
        there), the backup fails naming the cause and writes nothing; back on the
        medium, it is written."""
        mount_point = tmp_path / "usb"
        backups = DepBackups(service.db, mount_point, clock, data_dir=tmp_path)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        _unmount(mount_point)
        with pytest.raises(BackupFailed, match="not on an external disk"):
            backups.run_due()
        assert list(mount_point.iterdir()) == []
        _mount(mount_point, medium)
        [record] = backups.run_due()
        assert Path(record.path).resolve().is_relative_to(medium)

    def test_a_medium_mounted_again_under_another_device_number_is_still_the_medium(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        tmp_path: Path,
        medium: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A stick put back as sdc instead of sdb (or a FUSE or network share, at each
        mount) has another st_dev: still another file system than the data directory's,
        so the backup is written onto it."""
        mount_point = tmp_path / "usb"
        backups = DepBackups(service.db, mount_point, clock, data_dir=tmp_path)
        real = durable.device_of

        def remounted(path: Path) -> int | None:
            device = real(path)
            on_medium = Path(path).resolve().is_relative_to(medium)
            return None if device is None else device + 1000 * on_medium

        monkeypatch.setattr(backup_module, "device_of", remounted)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        assert Path(record.path).resolve().is_relative_to(medium)

    def test_a_medium_removed_while_the_backup_was_written_gets_no_record(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        tmp_path: Path,
        medium: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The medium goes away after the look before writing (here: right after the file
        is named): the backup fails, nothing is recorded, and the next run with the medium
        back records it."""
        mount_point = tmp_path / "usb"
        backups = DepBackups(service.db, mount_point, clock, data_dir=tmp_path)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        create = backup_module.create_streamed

        def pulled(*args: Any, **kwargs: Any) -> Any:
            result = create(*args, **kwargs)
            _unmount(mount_point)
            return result

        monkeypatch.setattr(backup_module, "create_streamed", pulled)
        with pytest.raises(BackupFailed, match="was the medium removed"):
            backups.run_due()
        assert db_rows(service.db, "SELECT count(*) FROM dep_backups")[0][0] == 0
        monkeypatch.setattr(backup_module, "create_streamed", create)
        _mount(mount_point, medium)
        [record] = backups.run_due()
        assert Path(record.path).resolve().is_relative_to(medium)

    def test_a_directory_on_the_data_disk_from_the_start_is_used_as_it_is(
        self, service: ReceiptService, clock: FrozenClock, tmp_path: Path
    ) -> None:
        """Only a medium seen at start is required later (the same-disk case is warned
        about at start, and still backed up)."""
        backups = DepBackups(service.db, tmp_path / "backups", clock, data_dir=tmp_path)
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        assert Path(record.path).is_file()


class TestStatus:
    def _status(self, service: ReceiptService, backups: DepBackups | None = None) -> Any:
        """The register's ``backup`` object of GET /v1/status, as JSON."""
        status = ServiceBackend(service, backups=backups).status()
        [register] = status.model_dump(mode="json")["registers"]
        return register["backup"]

    def test_overdue_after_seven_days_without_a_backup(
        self, service: ReceiptService, clock: FrozenClock
    ) -> None:
        """Q1 ended: not overdue for 7 days, then overdue until it is backed up."""
        clock.set(Q1_ENDS + dt.timedelta(days=7))
        assert self._status(service) == {
            "last": None,
            "overdue": False,
            "failure": None,
            "external": None,
        }
        clock.set(Q1_ENDS + dt.timedelta(days=7, seconds=1))
        assert self._status(service)["overdue"] is True

    def test_the_last_backup_and_a_failure_are_shown(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, backup_dir: Path
    ) -> None:
        """Quarter, path, SHA-256 and time of the latest backup; the current failure."""
        clock.set(dt.datetime(2026, 7, 20, tzinfo=dt.UTC))
        q1, _ = backups.run_quarter(REGISTER, Quarter(2026, 1))
        backup_dir.rename(backup_dir.with_name("moved"))
        backup_dir.write_text("x")
        with pytest.raises(BackupFailed):
            backups.run_due()
        shown = self._status(service, backups)
        assert shown["last"] == {
            "quarter": "2026-Q1",
            "path": q1.path,
            "sha256": q1.sha256,
            "at": "2026-07-20T00:00:00Z",
        }
        assert shown["overdue"] is True  # Q2 ended on 30 June, more than 7 days ago
        assert shown["failure"]["quarter"] == "2026-Q2"
        assert "not a directory" in shown["failure"]["error"]


def _unmount(mount_point: Path) -> None:
    """The medium is unmounted: its empty mount point is left on the till's disk."""
    mount_point.unlink()
    mount_point.mkdir()


def _mount(mount_point: Path, medium: Path) -> None:
    mount_point.rmdir()
    mount_point.symlink_to(medium)

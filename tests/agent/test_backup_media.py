"""The quarterly DEP backups on the medium they are for: a USB stick, formatted exFAT or
FAT32 (here an image mounted with exfat-fuse or fusefat). It has no hard links, no ':' in
names, no file modes, and does not tell upper from lower case."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import UNIT

from agent.at_rksv.dep import stream_dep
from agent.at_rksv.verify import verify_dep
from agent.backup import DepBackups, Quarter
from agent.clock import FrozenClock
from agent.errors import BackupFailed
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService, RegisterSetup
from factories import db_rows, sale

REGISTER = "KASSE-1"
Q1_ENDS = dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC)  # 1 April 00:00 in Vienna
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # not on a user's PATH everywhere
# .ci/run sets it: there a missing tool or privilege fails these tests instead of skipping
REQUIRED = os.environ.get("TILL_TESTS_MEDIA") == "required"


def _unavailable(why: str, packages: str) -> NoReturn:
    message = f"{why}: apt-get install {packages}"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def _tools(packages: str, *tools: str) -> dict[str, str]:
    """Where each tool is (skipped, naming the packages, when one is missing)."""
    found = {
        tool: shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{SBIN}") for tool in tools
    }
    if missing := [tool for tool, where in found.items() if where is None]:
        _unavailable(f"a real medium needs {', '.join(missing)}", packages)
    if not os.path.exists("/dev/fuse"):
        _unavailable("a real medium needs /dev/fuse (FUSE)", packages)
    return {tool: where for tool, where in found.items() if where is not None}


def _privileged(packages: str) -> list[str]:
    """The prefix to run losetup and mount as root: none, or sudo without a password."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo is None or not _succeeds(sudo, "-n", "true"):
        _unavailable("exFAT needs root or sudo -n (a loop device, a FUSE mount)", packages)
    return [sudo, "-n"]


def _succeeds(*args: str | Path) -> bool:
    return subprocess.run([str(a) for a in args], capture_output=True, check=False).returncode == 0


def _run(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout.strip()


def _image(tmp_path: Path, *mkfs: str) -> tuple[Path, Path]:
    """A 64 MiB image made by the command ``mkfs``, and an empty mount point for it."""
    image, mount_point = tmp_path / "usb.img", tmp_path / "usb"
    image.touch()
    os.truncate(image, 64 << 20)
    _run(*mkfs, image)
    mount_point.mkdir()
    return image, mount_point


@contextlib.contextmanager
def _exfat(tmp_path: Path) -> Iterator[Path]:
    """exFAT on a loop device, mounted with exfat-fuse for this process's user."""
    packages = "exfat-fuse exfatprogs"
    tool = _tools(packages, "mkfs.exfat", "mount.exfat-fuse", "losetup", "umount")
    root = _privileged(packages)
    image, mount_point = _image(tmp_path, tool["mkfs.exfat"])
    loop = _run(*root, tool["losetup"], "--find", "--show", image)
    try:
        owner = f"allow_other,uid={os.getuid()},gid={os.getgid()}"
        _run(*root, tool["mount.exfat-fuse"], "-o", owner, loop, mount_point)
        try:
            yield mount_point
        finally:
            # a file a failed test left open keeps it busy: detached lazily then
            if not _succeeds(*root, tool["umount"], mount_point):
                _run(*root, tool["umount"], "--lazy", mount_point)
    finally:
        _run(*root, tool["losetup"], "--detach", loop)


@contextlib.contextmanager
def _fat32(tmp_path: Path) -> Iterator[Path]:
    """FAT32 in an image file, mounted read-write with fusefat (no root needed)."""
    tool = _tools("dosfstools fusefat", "mkfs.vfat", "fusefat", "fusermount")
    image, mount_point = _image(tmp_path, tool["mkfs.vfat"], "-F", "32")
    _run(tool["fusefat"], "-o", "rw+", image, mount_point)
    try:
        yield mount_point
    finally:
        if not _succeeds(tool["fusermount"], "-u", mount_point):
            _run(tool["fusermount"], "-u", "-z", mount_point)


@pytest.fixture(name="usb", params=["exfat", "fat32"])
def _usb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A USB stick's file system mounted at ``tmp/usb``; unmounted after the test, also
    when it failed."""
    mount = _exfat if request.param == "exfat" else _fat32
    with mount(tmp_path) as mount_point:
        yield mount_point


@pytest.fixture(name="backups")
def _backups(service: ReceiptService, usb: Path, clock: FrozenClock) -> DepBackups:
    """The backup job of the till holding KASSE-1 (created 2026-03-02), onto the stick."""
    return DepBackups(service.db, usb / "dep", clock)


def _verified(service: ReceiptService, register: str, path: Path) -> None:
    """The file is the register's DEP as our verifier accepts it."""
    container = json.loads(export_container(service.db, register))
    with path.open("rb") as handle:
        report = verify_dep(stream_dep(handle), container)
    assert report.ok, report.findings


class TestOnAStick:
    def test_a_quarter_is_written_verified_and_recorded_once(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, usb: Path
    ) -> None:
        """The medium has no hard links: the file is named all the same, verifies, is
        recorded once with its hash; later runs write nothing and leave it as it is."""
        service.issue(sale(request_id="r1"))
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        path = usb / "dep" / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        assert record.path == str(path)
        assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        _verified(service, REGISTER, path)
        written = path.stat()
        assert backups.run_due() == []
        assert backups.run_quarter(REGISTER, Quarter(2026, 1)) == (record, False)
        assert path.stat().st_mtime_ns == written.st_mtime_ns
        assert os.listdir(path.parent) == [path.name]
        assert len(db_rows(service.db, "SELECT * FROM dep_backups")) == 1

    def test_a_kassen_id_with_colons_and_a_final_dot_gets_a_name_the_medium_takes(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, usb: Path
    ) -> None:
        """':' is refused there (and a final '.' dropped by the kernel's FAT): they are %3A
        and %2E in the directory's and the file's names, also for the longest Kassen-ID,
        its temporary file's name included."""
        longest = "A" + ":" * 63
        for register in ("AT:U1:K1.", longest):
            service.init_register(RegisterSetup(register, [UNIT]))
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        records = {r.register: r for r in backups.run_due()}
        path = usb / "dep" / "AT%3AU1%3AK1%2E" / "AT%3AU1%3AK1%2E_2026-Q1.dep.json"
        assert records["AT:U1:K1."].path == str(path)
        _verified(service, "AT:U1:K1.", path)
        _verified(service, longest, Path(records[longest].path))
        assert len(os.listdir(usb / "dep")) == 3

    def test_a_killed_writers_temporary_file_is_removed_and_the_backup_written(
        self, backups: DepBackups, clock: FrozenClock, usb: Path
    ) -> None:
        """As on ext4: the dot-temp file left mid-file goes, the backup is written whole."""
        directory = usb / "dep" / REGISTER
        directory.mkdir(parents=True)
        stale = directory / f".{REGISTER}_2026-Q1.dep.json.0123456789ab.tmp"
        stale.write_text('{\n  "Belege-Gruppe": [')
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        assert os.listdir(directory) == [Path(record.path).name]

    def test_a_complete_file_without_its_record_is_recorded_not_rewritten(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, usb: Path
    ) -> None:
        """A run killed after the file got its name: the next run records that file."""
        path = usb / "dep" / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        path.parent.mkdir(parents=True)
        with path.open("wb") as handle:
            export_dep(service.db, REGISTER, handle, end=dt.date(2026, 3, 31))
        before = path.stat().st_mtime_ns
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        [record] = backups.run_due()
        assert record.path == str(path)
        assert path.stat().st_mtime_ns == before

    def test_registers_differing_only_in_case_never_write_over_each_other(
        self, service: ReceiptService, backups: DepBackups, clock: FrozenClock, usb: Path
    ) -> None:
        """KASSE-1 and kasse-1 have one directory and one file name on the stick: the
        first one's backup is written, the second one's is refused naming the file that
        holds its name (not read, not compared), and nothing is lost or recorded twice."""
        service.init_register(RegisterSetup("kasse-1", [UNIT]))
        clock.set(Q1_ENDS + dt.timedelta(hours=1))
        with pytest.raises(BackupFailed) as refused:
            backups.run_due()
        assert refused.value.register_id == "kasse-1"
        assert "does not tell upper from lower case" in refused.value.reason
        assert f"taken by {REGISTER}_2026-Q1.dep.json" in refused.value.reason
        path = usb / "dep" / REGISTER / f"{REGISTER}_2026-Q1.dep.json"
        _verified(service, REGISTER, path)
        assert os.listdir(path.parent) == [path.name]
        rows = db_rows(service.db, "SELECT register_id, path FROM dep_backups")
        assert [tuple(r) for r in rows] == [(REGISTER, str(path))]


class TestMountedAgain:
    """A stick pulled and put back is mounted again, often under another device number (sdc
    instead of sdb; a FUSE file system gets a new one at each mount)."""

    @pytest.fixture(name="fuse")
    def _fuse(self) -> dict[str, str]:
        return _tools("dosfstools fusefat", "mkfs.vfat", "fusefat", "fusermount")

    @pytest.fixture(name="other_disk")
    def _other_disk(self) -> Iterator[Path]:
        """A data directory on tmpfs: neither the stick's file system nor the one under
        its mount point."""
        path = Path(tempfile.mkdtemp(dir="/dev/shm"))
        yield path
        shutil.rmtree(path)

    def test_a_stick_back_under_another_device_number_gets_the_due_backup(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        tmp_path: Path,
        fuse: dict[str, str],
    ) -> None:
        """Q1 is written, the stick is unmounted and mounted again with a new device number
        (another file system took the old one meanwhile): Q2 is written onto it."""
        (tmp_path / "holder").mkdir()
        holder, hold = _image(tmp_path / "holder", fuse["mkfs.vfat"], "-F", "32")
        with _fat32(tmp_path) as usb:
            backups = DepBackups(service.db, usb / "dep", clock, data_dir=tmp_path)
            clock.set(Q1_ENDS + dt.timedelta(hours=1))
            [q1] = backups.run_due()
            before = os.stat(usb).st_dev
            _run(fuse["fusermount"], "-u", usb)
            _run(fuse["fusefat"], "-o", "rw+", holder, hold)  # takes the freed number
            try:
                _run(fuse["fusefat"], "-o", "rw+", tmp_path / "usb.img", usb)
                assert os.stat(usb).st_dev != before
                clock.set(dt.datetime(2026, 7, 1, 8, 0, tzinfo=dt.UTC))
                [q2] = backups.run_due()
            finally:
                _run(fuse["fusermount"], "-u", hold)
            assert q2.quarter == "2026-Q2"
            assert sorted(os.listdir(usb / "dep" / REGISTER)) == sorted(
                Path(r.path).name for r in (q1, q2)
            )

    def test_an_unmounted_stick_leaves_nothing_on_the_disk_under_its_mount_point(
        self,
        service: ReceiptService,
        clock: FrozenClock,
        tmp_path: Path,
        fuse: dict[str, str],
        other_disk: Path,
    ) -> None:
        """The data directory is on another disk than the mount point (a /var of its own,
        the mount point on /): the empty mount point is no medium either; the backup fails,
        and is written once the stick is back."""
        with _fat32(tmp_path) as usb:
            backups = DepBackups(service.db, usb / "dep", clock, data_dir=other_disk)
            _run(fuse["fusermount"], "-u", usb)
            clock.set(Q1_ENDS + dt.timedelta(hours=1))
            with pytest.raises(BackupFailed, match="is the medium mounted"):
                backups.run_due()
            assert list(usb.iterdir()) == []
            _run(fuse["fusefat"], "-o", "rw+", tmp_path / "usb.img", usb)
            [record] = backups.run_due()
            assert Path(record.path).is_file()

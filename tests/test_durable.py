"""agent.durable: a name is only given to a regular file, in place of a regular file;
a new file never replaces one, also without hard links (FAT, exFAT); directories are made
durably; the device a path is (or would be) on."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from agent import durable
from agent.durable import (
    NotRegularFile,
    create_file,
    create_streamed,
    device_of,
    make_directories,
    replace_file,
)


def test_replace_file_never_renames_over_a_fifo(tmp_path: Path) -> None:
    """A fifo (as a device such as /dev/null) keeps its name: refused, nothing written."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFile) as caught:
        replace_file(fifo, b"secret", mode=0o600)
    assert caught.value.filename == str(fifo)
    assert caught.value.strerror == "it is a fifo (named pipe), not a regular file"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert os.listdir(tmp_path) == ["pipe"]


def test_replace_file_refuses_a_directory_and_a_link_to_a_fifo(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(IsADirectoryError):
        replace_file(directory, b"x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    with pytest.raises(NotRegularFile):
        replace_file(link, b"x")
    assert link.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["dir", "link", "pipe"]


def test_replace_file_replaces_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    replace_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["file"]


class TestWithoutHardLinks:
    """FAT and exFAT refuse os.link with EPERM (tests/agent/test_backup_media.py has the
    real medium); here os.link fails so on any file system."""

    @pytest.fixture(name="no_links", autouse=True)
    def _no_links(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """os.link fails as on FAT; each fsync of a file or directory and each rename is
        recorded, in order."""
        steps: list[str] = []
        fsync, rename = os.fsync, os.rename

        def link(src: object, dst: object) -> None:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src, None, dst)

        def synced(fd: int) -> None:
            fsync(fd)
            steps.append("fsync " + ("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))

        def renamed(src: Path, dst: Path) -> None:
            rename(src, dst)
            steps.append("rename")

        monkeypatch.setattr(os, "link", link)
        monkeypatch.setattr(os, "fsync", synced)
        monkeypatch.setattr(os, "rename", renamed)
        return steps

    def test_a_sole_writer_gets_its_file_named_in_the_durable_order(
        self, tmp_path: Path, no_links: list[str]
    ) -> None:
        """The data is fsynced, then named by a rename, then the file under its name (its
        inode: Linux's vfat keeps the new entry's cluster and size there), then the
        directory; the result of ``write`` is returned, and no temporary file is left."""
        path = tmp_path / "backup.json"
        assert create_streamed(path, lambda out: out.write(b"data"), sole_writer=True) == 4
        assert path.read_bytes() == b"data"
        assert os.listdir(tmp_path) == ["backup.json"]
        assert no_links == ["fsync file", "rename", "fsync file", "fsync directory"]

    def test_a_sole_writer_never_renames_over_a_file(self, tmp_path: Path) -> None:
        """The name is taken: FileExistsError, the file there is kept, the temporary gone."""
        path = tmp_path / "backup.json"
        path.write_bytes(b"theirs")
        with pytest.raises(FileExistsError) as taken:
            create_streamed(path, lambda out: out.write(b"ours"), sole_writer=True)
        assert taken.value.filename == str(path)
        assert path.read_bytes() == b"theirs"
        assert os.listdir(tmp_path) == ["backup.json"]

    def test_another_writer_is_told_the_file_system_has_no_hard_links(self, tmp_path: Path) -> None:
        """Without ``sole_writer`` a look and a rename could replace a file another
        process named meanwhile: the error stands, nothing is named, nothing left."""
        with pytest.raises(PermissionError):
            create_file(tmp_path / "key.pem", b"secret", mode=0o600)
        assert os.listdir(tmp_path) == []


class TestMakeDirectories:
    def test_each_directory_made_is_fsynced_in_its_parent(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two levels missing below an existing one: both are made, outermost first, and
        each one's name is fsynced in its parent, not only the last one's."""
        synced: list[Path] = []
        fsync_directory = durable.fsync_directory

        def recorded(directory: Path) -> None:
            fsync_directory(directory)
            synced.append(directory)

        monkeypatch.setattr(durable, "fsync_directory", recorded)
        (tmp_path / "mnt").mkdir()
        target = tmp_path / "mnt" / "usb" / "backups"
        make_directories(target)
        assert target.is_dir()
        assert synced == [tmp_path / "mnt", tmp_path / "mnt" / "usb"]
        synced.clear()
        make_directories(target)  # there already: nothing made, nothing synced
        assert synced == []

    def test_a_file_in_the_way_is_not_a_directory(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("in the way")
        with pytest.raises(NotADirectoryError):
            make_directories(tmp_path / "file" / "dir")


class TestDeviceOf:
    def test_a_missing_path_is_on_the_device_of_its_nearest_existing_parent(
        self, tmp_path: Path
    ) -> None:
        assert device_of(tmp_path) == os.stat(tmp_path).st_dev
        assert device_of(tmp_path / "not" / "yet") == os.stat(tmp_path).st_dev

    def test_a_path_under_a_file_has_no_device(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        assert device_of(tmp_path / "file" / "dir") is None

"""agent.durable: a name is only given to a regular file, in place of a regular file;
directories are made durably; the device a path is (or would be) on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent import durable
from agent.durable import NotRegularFile, device_of, make_directories, replace_file


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

"""agent.durable: a name is only given to a regular file, in place of a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.durable import NotRegularFile, replace_file


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

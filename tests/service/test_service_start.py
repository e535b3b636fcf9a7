"""``TillService.start`` on a new data directory: what it creates and with which mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from service.conftest import quiet_config

from agent.service import TillService


@pytest.fixture(name="umask_022")
def _umask_022() -> Iterator[None]:
    """The usual interactive umask: without an explicit mode, mkdir makes 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_a_new_data_directory_and_its_keys_are_private(tmp_path: Path) -> None:
    """`till-agent run` on a missing data directory creates it and keys/ 0700 (they hold
    the registers' AES keys and the development key), the database 0600."""
    data_dir = tmp_path / "new" / "data"
    service = TillService(quiet_config(data_dir))
    try:
        service.start()
    finally:
        service.stop()
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "keys") == 0o700
    assert _mode(data_dir / "till.sqlite3") == 0o600

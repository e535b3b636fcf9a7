"""``GET /v1/status`` says whether the DEP backups go to an external medium (§ 7 Abs 3
RKSV): a default ``[backup] dir`` inside the data directory is the till's own disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import START
from service.conftest import quiet_config

from agent.clock import FrozenClock
from agent.service import TillService


def _external(tmp_path: Path, **backup: Any) -> bool | None:
    config = quiet_config(tmp_path / "data", backup=backup)
    service = TillService(config, clock=FrozenClock(START))
    service.start()
    try:
        [register] = service.backend.status().model_dump(mode="json")["registers"]
        external: bool | None = register["backup"]["external"]
        return external
    finally:
        service.stop()


@pytest.fixture(name="medium")
def _medium(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm): another file system than the data directory's."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:  # pragma: no cover
        pytest.skip("needs /dev/shm on another file system than the test directory")
    medium = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        yield medium
    finally:
        shutil.rmtree(medium)


def test_backups_on_the_data_disk_are_not_external(tmp_path: Path) -> None:
    assert _external(tmp_path) is False


def test_backups_on_another_file_system_are_external(tmp_path: Path, medium: Path) -> None:
    assert _external(tmp_path, dir=str(medium)) is True


def test_no_backups_no_answer(tmp_path: Path) -> None:
    assert _external(tmp_path, enabled=False) is None

"""``till-agent run`` writes the quarterly DEP backups by itself (agent/service.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import FrozenClock
from agent.config import AgentConfig
from agent.service import TillService
from factories import db_rows

START = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)


def _config(data_dir: Path, **backup: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "data_dir": data_dir,
            "spool": {"enabled": False},
            "printer": {"kind": "none"},
            "api": {"enabled": False},
            "backup": backup,
        }
    )


@pytest.fixture(name="clock")
def _clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(name="till")
def _till(tmp_path: Path, clock: FrozenClock) -> Iterator[TillService]:
    """The service on a new data directory (its register created on 2026-03-02)."""
    service = TillService(_config(tmp_path / "data"), clock=clock)
    service.start()
    yield service
    service.stop()


def _wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_service_backs_up_an_ended_quarter_and_shows_it(
    till: TillService, clock: FrozenClock, tmp_path: Path
) -> None:
    """Nothing while Q1 runs; once it has ended (the loop's next pass, woken here instead
    of waiting its minute) the file is written and recorded, and the status shows it."""
    assert till.backups is not None
    assert db_rows(till.db, "SELECT * FROM dep_backups") == []
    clock.set(dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC))
    till.backup_loop.wake()
    _wait_for(lambda: db_rows(till.db, "SELECT * FROM dep_backups"))
    path = tmp_path / "data" / "dep-backups" / "KASSE-1" / "KASSE-1_2026-Q1.dep.json"
    [row] = db_rows(till.db, "SELECT quarter, path, sha256 FROM dep_backups")
    assert tuple(row) == ("2026-Q1", str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    [register] = till.backend.status().model_dump(mode="json")["registers"]
    assert register["backup"]["last"]["quarter"] == "2026-Q1"
    assert register["backup"]["overdue"] is False


def test_run_warns_when_the_backups_are_on_the_data_disk(
    tmp_path: Path, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The default <data_dir>/dep-backups is not an external medium: a warning at start."""
    caplog.set_level(logging.WARNING, logger="agent.service")
    service = TillService(_config(tmp_path / "data"), clock=clock)
    try:
        service.start()
    finally:
        service.stop()
    [warning] = [r.getMessage() for r in caplog.records if "backup.dir" in r.getMessage()]
    assert "is on the same file system as data_dir" in warning


def test_with_backups_disabled_no_loop_runs_and_overdue_still_shows(
    tmp_path: Path, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """[backup] enabled = false: said at start, nothing written, and the status still
    says when a quarter has gone unbacked-up for more than 7 days."""
    caplog.set_level(logging.WARNING, logger="agent.service")
    service = TillService(_config(tmp_path / "data", enabled=False), clock=clock)
    try:
        service.start()
        assert service.backups is None
        assert not hasattr(service, "backup_loop")
        clock.set(dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
        [register] = service.backend.status().model_dump(mode="json")["registers"]
        assert register["backup"] == {
            "last": None,
            "overdue": True,
            "failure": None,
            "external": None,
        }
    finally:
        service.stop()
    assert "DEP backups are disabled ([backup] enabled = false)" in caplog.messages
    assert not (tmp_path / "data" / "dep-backups").exists()


def test_a_failing_backup_is_one_error_line_per_run_of_failures(
    tmp_path: Path, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A backup directory that cannot be made: one ERROR line naming the register, the
    quarter and the cause (no traceback), however often the loop retries."""
    caplog.set_level(logging.DEBUG)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the backup directory should be")
    service = TillService(_config(tmp_path / "data", dir=str(blocked)), clock=clock)
    service.start()
    try:
        clock.set(dt.datetime(2026, 4, 2, 8, 0, tzinfo=dt.UTC))
        assert service.backups is not None
        for _ in range(3):
            service.backup_loop.wake()
            time.sleep(0.2)
        _wait_for(lambda: "KASSE-1" in service.backups.failures)  # type: ignore[union-attr]
    finally:
        service.stop()
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and "DEP backup" in r.getMessage()
    ]
    [error] = errors
    message = error.getMessage()
    assert message.startswith("register KASSE-1: the DEP backup of 2026-Q1 failed: cannot write")
    assert message.endswith("not a directory (retried every 60 s)")
    assert error.exc_info is None

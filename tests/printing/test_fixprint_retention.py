"""The file printer's ``prints/`` no longer grows without bound: ``[printer] keep_days``.

A job and its preview are deleted once they are ``keep_days`` old (default 30, 0 keeps
them for ever), after the first job of a start and then at most once a day, never with a
scan per job; a large backlog is removed a batch per job. Real files on disk, their ages
set with ``os.utime``; the once-a-day clock is the printer's own (injected).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WriteConfig

from agent.config import PrinterConfig, load_config
from agent.errors import ConfigurationError
from agent.printing import FilePrinter, open_printer, transport

DAY = 86400.0


def _jobs(directory: Path, numbers: range, *, age_days: float) -> None:
    """Jobs with their previews, written ``age_days`` ago."""
    directory.mkdir(parents=True, exist_ok=True)
    when = time.time() - age_days * DAY
    for number in numbers:
        for suffix in (".bin", ".png"):
            path = directory / f"{number:06d}{suffix}"
            path.write_bytes(b"old")
            os.utime(path, (when, when))


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _bins(directory: Path) -> list[str]:
    return [name for name in _names(directory) if name.endswith(".bin")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="scans")
def _scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories ``os.scandir`` lists from now on (the real call does the work)."""
    seen: list[str] = []
    real: Callable[..., Any] = os.scandir

    def counting(path: Any = ".") -> Any:
        seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return seen


def test_jobs_older_than_keep_days_go_with_the_first_job(tmp_path: Path) -> None:
    """Jobs 1-3 are 40 days old, 4 is 10: the first job removes 1-3 and their previews."""
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 4), age_days=40)
    _jobs(prints, range(4, 5), age_days=10)
    printer = FilePrinter(prints, keep_days=30)
    assert printer.write(b"new", png=b"png").name == "000005.bin"
    assert _names(prints) == ["000004.bin", "000004.png", "000005.bin", "000005.png"]


def test_a_job_dated_ahead_does_not_stop_the_removal_of_older_ones(tmp_path: Path) -> None:
    """Job 3 was written while the clock ran a year ahead: it stays (its age is unknown),
    and the 100-day-old jobs after it go all the same."""
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 7), age_days=100)
    _jobs(prints, range(3, 4), age_days=-365)
    printer = FilePrinter(prints, keep_days=30)
    assert printer.write(b"new").name == "000007.bin"
    assert _bins(prints) == ["000003.bin", "000007.bin"]


def test_keep_days_0_keeps_every_job(tmp_path: Path) -> None:
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 3), age_days=4000)
    FilePrinter(prints, keep_days=0).write(b"new")
    assert _names(prints) == ["000001.bin", "000001.png", "000002.bin", "000002.png", "000003.bin"]


def test_the_directory_is_read_again_only_a_day_later(tmp_path: Path, scans: list[str]) -> None:
    """After the first job's look, jobs that age past keep_days stay until a day has passed:
    no scan per job."""
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 2), age_days=40)
    clock = Clock()
    printer = FilePrinter(prints, keep_days=30, clock=clock)
    printer.write(b"a")  # 2; removes 1
    assert not (prints / "000001.bin").exists()
    first = len(scans)
    _jobs(prints, range(2, 3), age_days=40)  # job 2 is now old
    for _ in range(20):
        printer.write(b"b")
    clock.now += DAY - 1
    printer.write(b"c")
    assert len(scans) == first  # 22 jobs later: not read again
    assert (prints / "000002.bin").exists()
    clock.now += 1
    printer.write(b"d")
    assert len(scans) == first + 1
    assert not (prints / "000002.bin").exists()
    assert (prints / "000003.bin").exists()


def test_a_large_backlog_goes_a_batch_per_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scans: list[str]
) -> None:
    """With a batch of 2, five old jobs take three jobs to remove, from one read of the
    directory (beside the first job's look for the highest number)."""
    monkeypatch.setattr(transport, "PRUNE_BATCH", 2)
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 6), age_days=40)
    printer = FilePrinter(prints, keep_days=30)
    printer.write(b"6")
    assert _bins(prints)[0] == "000003.bin"
    printer.write(b"7")
    assert _bins(prints)[0] == "000005.bin"
    printer.write(b"8")
    assert _bins(prints) == [
        "000006.bin",
        "000007.bin",
        "000008.bin",
    ]
    assert len(scans) == 2  # the highest number, then the old jobs: once each


def test_a_job_that_cannot_be_removed_never_fails_a_print(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An old job the agent may not remove (here a directory in its name): logged, the
    print is written all the same."""
    prints = tmp_path / "prints"
    _jobs(prints, range(1, 2), age_days=40)
    (prints / "000001.bin").unlink()
    (prints / "000001.bin").mkdir()
    old = time.time() - 40 * DAY
    os.utime(prints / "000001.bin", (old, old))
    path = FilePrinter(prints, keep_days=30).write(b"new")
    assert path.read_bytes() == b"new"
    assert "cannot remove an old job" in caplog.text


class TestConfiguration:
    def test_the_default_keeps_30_days(self) -> None:
        assert PrinterConfig().keep_days == 30

    def test_the_file_printer_gets_keep_days(self, tmp_path: Path) -> None:
        printer = open_printer(PrinterConfig(kind="file", dir=tmp_path, keep_days=7))
        assert isinstance(printer, FilePrinter)
        assert printer.keep_days == 7

    def test_from_toml_and_the_environment(self, write_config: WriteConfig) -> None:
        path = write_config("[printer]\nkeep_days = 0\n")
        assert load_config(path, env={}).printer.keep_days == 0
        env = {"TILL_AGENT_PRINTER__KEEP_DAYS": "90"}
        assert load_config(path, env=env).printer.keep_days == 90

    def test_a_negative_value_is_refused(self, write_config: WriteConfig) -> None:
        with pytest.raises(ConfigurationError, match="keep_days"):
            load_config(write_config("[printer]\nkeep_days = -1\n"), env={})

"""The file printer's cost per job does not grow with the jobs already in its directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.printing import FilePrinter

EARLIER_JOBS = 5_000


def _earlier_jobs(directory: Path, count: int) -> None:
    """``count`` jobs of an earlier run, each with its preview, as `run` leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        (directory / f"{number:06d}.bin").write_bytes(b"old job")
        (directory / f"{number:06d}.png").write_bytes(b"old preview")


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories ``os.scandir`` lists from now on (``Path.glob`` lists through it too);
    the real call still does the work: this only watches."""
    seen: list[str] = []
    real: Callable[..., Any] = os.scandir

    def counting(path: Any = ".") -> Any:
        seen.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return seen


def test_the_directory_is_scanned_once_however_many_jobs_follow(
    tmp_path: Path, scans: list[str]
) -> None:
    """5,000 earlier jobs: the first job scans the directory, the next 49 do not."""
    prints = tmp_path / "prints"
    _earlier_jobs(prints, EARLIER_JOBS)
    printer = FilePrinter(prints)
    paths = [printer.write(f"job {n}".encode(), png=b"preview") for n in range(50)]
    assert [p.name for p in paths[:2]] == ["005001.bin", "005002.bin"]
    assert paths[-1] == prints / "005050.bin"
    assert paths[-1].read_bytes() == b"job 49"
    assert paths[-1].with_suffix(".png").read_bytes() == b"preview"
    assert scans.count(str(prints)) == 1


def test_a_number_taken_meanwhile_is_skipped_not_overwritten(
    tmp_path: Path, scans: list[str]
) -> None:
    """The number kept in memory may be stale (another writer, a file put there by hand):
    the link refuses to overwrite it, one new scan finds the highest, and the job takes
    the number after it."""
    printer = FilePrinter(tmp_path)
    assert printer.write(b"one") == tmp_path / "000001.bin"
    for number in (2, 3, 7):
        (tmp_path / f"{number:06d}.bin").write_bytes(b"someone else's")
    assert printer.write(b"two") == tmp_path / "000008.bin"
    assert printer.write(b"three") == tmp_path / "000009.bin"
    assert all((tmp_path / f"{n:06d}.bin").read_bytes() == b"someone else's" for n in (2, 3, 7))
    assert scans.count(str(tmp_path)) == 2  # the first job's, and once for the taken number


def test_names_that_are_not_job_numbers_are_ignored(tmp_path: Path) -> None:
    """Superscript digits are digits to ``str.isdigit`` but no number to ``int``."""
    (tmp_path / "000004.bin").write_bytes(b"job")
    for name in ("notes.bin", "².bin", ".bin", "000009.png.tmp"):
        (tmp_path / name).write_bytes(b"not a job")
    assert FilePrinter(tmp_path).write(b"next") == tmp_path / "000005.bin"

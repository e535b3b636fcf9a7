"""The print jobs of a restored backup: none of them prints again as an original.

A backup is taken while the till prints: the jobs still open in it (``queued``, ``failed``)
and its receipts that had no job yet were printed by the till the backup comes from, or
were about to be. The print worker trusts the table (it prints open jobs and receipts
after the last job), so the restore marks them ``skipped`` in its own transaction and says
which: a receipt that did not come out is reprinted with ``till-agent reprint``, a copy
marked KOPIE. A register that never had a job is left to the worker, which starts after
its last receipt (or prints a register's lone Startbeleg, never printed anywhere).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from itertools import groupby

__all__ = ["SkippedPrint", "SkippedPrints", "skip_open_prints"]

_OPEN = "state IN ('queued', 'failed')"  # the WHERE of ix_print_jobs_open, as the worker's
_WHY = (
    "restored from a backup: the till it comes from printed it or was about to;"
    " `till-agent reprint` prints a copy (KOPIE)"
)
# a register's receipts after its last original job that have none: (register, last job)
_WITHOUT_JOB = (
    "SELECT number FROM receipts r WHERE r.register_id = ? AND r.number > ? AND NOT EXISTS"
    " (SELECT 1 FROM print_jobs p WHERE p.register_id = r.register_id"
    " AND p.number = r.number AND p.copy = 0) ORDER BY number"
)


@dataclass(frozen=True, slots=True)
class SkippedPrint:
    register: str
    number: int
    copy: int  # 0: the original
    was: str  # queued, failed, or "no job" (a receipt the worker had not reached)


@dataclass(frozen=True, slots=True)
class SkippedPrints:
    jobs: tuple[SkippedPrint, ...]

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def as_list(self) -> list[dict[str, object]]:
        return [
            {"register": j.register, "number": j.number, "copy": j.copy, "was": j.was}
            for j in self.jobs
        ]

    def ranges(self) -> dict[str, list[tuple[int, int]]]:
        """The receipt numbers by register, as runs: ``{"KASSE-1": [(53, 97)]}``."""
        found: dict[str, list[tuple[int, int]]] = {}
        numbers = sorted({(j.register, j.number) for j in self.jobs})
        for register, items in groupby(numbers, key=lambda item: item[0]):
            runs = found.setdefault(register, [])
            for _, number in items:
                if runs and runs[-1][1] == number - 1:
                    runs[-1] = (runs[-1][0], number)
                else:
                    runs.append((number, number))
        return found

    def shown(self) -> str:
        """``KASSE-1 53-97, 101``; registers separated by ``;``."""
        return "; ".join(
            f"{register} " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
            for register, runs in self.ranges().items()
        )


def skip_open_prints(conn: sqlite3.Connection, at: str) -> SkippedPrints:
    """Inside the caller's write transaction: mark the open jobs ``skipped`` (their bytes
    dropped) and give every receipt after a register's last job a ``skipped`` original."""
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
    if "print_jobs" not in tables:  # a schema before 0003: the worker starts afresh
        return SkippedPrints(())
    opened = [
        SkippedPrint(str(r[0]), int(r[1]), int(r[2]), str(r[3]))
        for r in conn.execute(
            f"SELECT register_id, number, copy, state FROM print_jobs WHERE {_OPEN} ORDER BY id"  # noqa: S608
        )
    ]
    conn.execute(
        f"UPDATE print_jobs SET state = 'skipped', data = x'', done_at = ?, last_error = ?"  # noqa: S608
        f" WHERE {_OPEN}",
        (at, _WHY),
    )
    return SkippedPrints((*opened, *_skip_unjobbed(conn, at)))


def _skip_unjobbed(conn: sqlite3.Connection, at: str) -> list[SkippedPrint]:
    lasts = conn.execute(
        "SELECT register_id, max(number) FROM print_jobs WHERE copy = 0 GROUP BY register_id"
    ).fetchall()
    skipped: list[SkippedPrint] = []
    for register, last_job in lasts:
        for (number,) in conn.execute(_WITHOUT_JOB, (register, last_job)).fetchall():
            conn.execute(
                "INSERT INTO print_jobs (register_id, number, copy, data, state, attempts,"
                " last_error, created_at, done_at) VALUES (?, ?, 0, x'', 'skipped', 0, ?, ?, ?)",
                (register, number, _WHY, at, at),
            )
            skipped.append(SkippedPrint(str(register), int(number), 0, "no job"))
    return skipped

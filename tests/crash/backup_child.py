"""A backup process for the backup SIGKILL test: it pauses at a chosen point of writing
a DEP backup and waits there to be killed.

Run as ``python tests/crash/backup_child.py DATA_DIR BACKUP_DIR WHERE``. It opens the till
database in DATA_DIR (which must exist) and runs the backups due on 2026-04-15 into
BACKUP_DIR. WHERE says where it stops: ``writing`` after the 500th receipt went into the
temporary file, ``named`` after the file got its final name and before its record was
committed. There it writes ``PAUSED`` (one line) to stdout and sleeps; the test kills it.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the project is not necessarily installed in the venv
    sys.path.insert(0, str(ROOT))

from agent import backup  # noqa: E402
from agent.clock import FrozenClock  # noqa: E402
from storage.db import open_till_db  # noqa: E402

PAUSE_AFTER = 500
CLOCK = dt.datetime(2026, 4, 15, 8, 0, tzinfo=dt.UTC)


def _pause() -> None:
    os.write(1, b"PAUSED\n")
    time.sleep(600)
    sys.exit("not killed")


def _pause_while_writing() -> None:
    export = backup.export_dep

    def slow_export(*args: Any, **kwargs: Any) -> int:
        seen = 0

        def on_receipt() -> None:
            nonlocal seen
            seen += 1
            if seen == PAUSE_AFTER:
                _pause()

        return export(*args, on_receipt=on_receipt, **kwargs)

    backup.export_dep = slow_export  # type: ignore[assignment]


def _pause_before_the_record() -> None:
    def record(*_args: Any) -> Any:
        _pause()

    backup.DepBackups._record = record  # type: ignore[method-assign]


def main() -> None:
    data_dir, backup_dir, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    {"writing": _pause_while_writing, "named": _pause_before_the_record}[where]()
    db = open_till_db(data_dir, create=False)
    backup.DepBackups(db, backup_dir, FrozenClock(CLOCK)).run_due()
    sys.exit("the backup ended without pausing")


if __name__ == "__main__":
    main()

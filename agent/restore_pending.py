"""The intent marker of ``till-agent restore``: ``<data_dir>/restore.pending``.

A restore moves the till database's files aside before the restored copy takes their name:
killed (or the power cut) in between, the data directory holds part of the old database, or
none. The marker is written and fsynced before the first of those renames and removed only
after the copy has its name, so such a state is never taken for a till database (or for a
new till: ``storage.db.open_till_db`` refuses while it is there). It records what a second
run of the same restore needs to finish it, in the same ``replaced-`` directory, without
reading the half-moved database again: the copy's name and its ``till.restored`` event (the
copy is known by that event's hash, also once it has the database's name), the backup's
SHA-256, and the numbers the replaced database had when the restore read it.
:func:`abandon` puts the replaced files back instead.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.durable import fsync_directory, replace_file, temporary_names
from agent.errors import NotFound, StorageError
from agent.restore_check import CurrentTill, LastReceipt, UnitSwitch
from agent.restore_prints import SkippedPrint, SkippedPrints
from storage.db import DB_FILE, RESTORE_MARKER

__all__ = [
    "SIDE_FILES",
    "Abandoned",
    "Pending",
    "abandon_pending",
    "clear_leftovers",
    "is_copy",
    "read_pending",
    "remove_pending",
    "write_pending",
]

SIDE_FILES = ("-wal", "-shm", "-journal")  # moved before the database itself
_COPY_GLOB = f".{DB_FILE}.*.tmp"


@dataclass(frozen=True, slots=True)
class Pending:
    """What ``restore.pending`` records (see the module's docstring)."""

    copy: str  # the copy's name in the data directory
    replaced: str  # the directory the current files go to (made when there are any)
    backup: str
    sha256: str
    size: int
    revision: str
    registers: tuple[LastReceipt, ...]  # the backup's last receipts
    # the replaced database as the restore read it (no JWS; its unit switches the backup lacks)
    current: CurrentTill
    skipped: SkippedPrints
    journal_seq: int  # the copy's till.restored event
    journal_hash: str
    confirmed_by_operator: bool
    created_data_dir: bool
    at: str  # when the restore read the current database (UTC)

    def as_dict(self) -> dict[str, Any]:
        current = self.current
        return {
            "copy": self.copy,
            "replaced": self.replaced,
            "backup": {"path": self.backup, "sha256": self.sha256, "size": self.size},
            "schema_revision": self.revision,
            "registers": [r.as_dict() for r in self.registers],
            "current": {
                "problem": current.problem,
                "last": [r.as_dict() for r in current.last],
                "journal_seq": current.journal_seq,
                "switches": [s.as_dict() for s in current.switches],
            },
            "skipped_prints": self.skipped.as_list(),
            "journal": {"seq": self.journal_seq, "hash": self.journal_hash},
            "confirmed_by_operator": self.confirmed_by_operator,
            "created_data_dir": self.created_data_dir,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pending:
        current = data["current"]
        return cls(
            copy=str(data["copy"]),
            replaced=str(data["replaced"]),
            backup=str(data["backup"]["path"]),
            sha256=str(data["backup"]["sha256"]),
            size=int(data["backup"]["size"]),
            revision=str(data["schema_revision"]),
            registers=tuple(LastReceipt(**r) for r in data["registers"]),
            current=CurrentTill(
                current["problem"],
                tuple(LastReceipt(**r) for r in current["last"]),
                journal_seq=int(current["journal_seq"]),
                switches=tuple(UnitSwitch(**s) for s in current.get("switches", [])),
            ),
            skipped=SkippedPrints(tuple(SkippedPrint(**j) for j in data["skipped_prints"])),
            journal_seq=int(data["journal"]["seq"]),
            journal_hash=str(data["journal"]["hash"]),
            confirmed_by_operator=bool(data["confirmed_by_operator"]),
            created_data_dir=bool(data["created_data_dir"]),
            at=str(data["at"]),
        )


def write_pending(data_dir: Path, pending: Pending) -> None:
    """Write the marker in one step (a temporary file, fsynced, renamed; the directory
    fsynced: the copy's name is durable with it)."""
    body = json.dumps(pending.as_dict(), indent=1, ensure_ascii=False) + "\n"
    replace_file(data_dir / RESTORE_MARKER, body.encode("utf-8"), mode=0o644)


def read_pending(data_dir: Path) -> Pending | None:
    """The marker in ``data_dir``, or None.

    Raises:
        StorageError: it is there but cannot be read as one.
    """
    marker = data_dir / RESTORE_MARKER
    try:
        text = marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {marker}: {exc.strerror}") from exc
    try:
        return Pending.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(
            f"{marker} is not a restore marker of this version ({exc!r}): a restore into"
            f" {data_dir} did not finish; look at the files there and in replaced-*/"
        ) from exc


def remove_pending(data_dir: Path) -> None:
    (data_dir / RESTORE_MARKER).unlink()
    fsync_directory(data_dir)


def clear_leftovers(data_dir: Path, pending: Pending | None) -> list[str]:
    """Remove the copies (and their journals) killed restores left, but the one
    ``pending`` names, and unfinished marker files; their names. Under the lock."""
    keep = set() if pending is None else {pending.copy}
    found = [p for p in data_dir.glob(f"{_COPY_GLOB}*") if _copy_of(p.name) not in keep]
    found += temporary_names(data_dir / RESTORE_MARKER)
    for path in found:
        path.unlink(missing_ok=True)
    if found:
        fsync_directory(data_dir)
    return sorted(p.name for p in found)


def _copy_of(name: str) -> str:
    """``.till.sqlite3.<hex>.tmp`` for that name and its ``-journal`` (and the like)."""
    return name[: name.index(".tmp") + len(".tmp")]


def is_copy(path: Path, pending: Pending) -> bool:
    """Whether ``path`` is the restore's copy: its ``till.restored`` event is there. Read
    ``immutable``: the old database, if that is what is there, is left as it is (no -shm,
    its -wal not read)."""
    if not path.is_file():
        return False
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            row = conn.execute(
                "SELECT hash FROM journal WHERE seq = ?", (pending.journal_seq,)
            ).fetchone()
    except sqlite3.Error:
        return False
    return row is not None and str(row[0]) == pending.journal_hash


@dataclass(frozen=True, slots=True)
class Abandoned:
    """What ``restore --abandon`` did."""

    data_dir: Path
    backup: str
    put_back: tuple[str, ...]  # the files moved back from the replaced directory
    replaced: str  # that directory (removed when it was left empty)
    removed_copy: bool  # the copy had the database's name already

    def as_dict(self) -> dict[str, Any]:
        return {
            "abandoned": True,
            "data_dir": str(self.data_dir),
            "backup": self.backup,
            "put_back": list(self.put_back),
            "replaced": self.replaced,
            "removed_restored_copy": self.removed_copy,
        }


def abandon_pending(data_dir: Path) -> Abandoned:
    """Undo the unfinished restore in ``data_dir``, under its lock: the copy goes (also
    when it has the database's name), the files moved into the replaced directory come
    back where none of that name is, the marker goes last. Run again after a kill, it
    goes on where it stopped.

    Raises:
        NotFound: no restore is pending there.
        StorageError: a file is both in the replaced directory and in the data directory.
    """
    pending = read_pending(data_dir)
    if pending is None:
        raise NotFound(f"no restore is pending in {data_dir} (there is no {RESTORE_MARKER})")
    target = data_dir / DB_FILE
    removed = is_copy(target, pending)
    if removed:
        target.unlink()
        fsync_directory(data_dir)
    put_back = _put_back(data_dir, pending.replaced)
    for leftover in data_dir.glob(f"{pending.copy}*"):
        leftover.unlink()
    remove_pending(data_dir)
    return Abandoned(data_dir, pending.backup, tuple(put_back), pending.replaced, removed)


def _put_back(data_dir: Path, replaced: str) -> list[str]:
    kept = data_dir / replaced
    if not kept.is_dir():
        return []
    moved = []
    for name in (DB_FILE, *(f"{DB_FILE}{s}" for s in SIDE_FILES)):
        if not os.path.lexists(kept / name):
            continue
        if os.path.lexists(data_dir / name):
            raise StorageError(
                f"{name} is both in {data_dir} and in {kept}: which one is the till's cannot"
                " be told here; nothing more was moved"
            )
        os.rename(kept / name, data_dir / name)
        moved.append(name)
    fsync_directory(data_dir)
    if not any(kept.iterdir()):
        kept.rmdir()
        fsync_directory(data_dir)
    return moved

"""``till-agent restore``: put a backup of the till database back without ever giving a
receipt number twice.

The numbers after a backup's last receipt may be on customers' paper: a till restored
from an older backup would sign new, different receipts under them (a Belegnummer is
unique per Kassen-ID, rksv.md 1 field 3), and the DEP would lose the printed ones. So,
holding the data directory's writer lock (no service runs meanwhile):

1. the backup is copied to a temporary file in the data directory, hashed on the way, and
   the copy checked (:class:`agent.restore_check.BackupCopy`): integrity, the journal's
   hash chain, a schema revision of ours (an older one is migrated at the next start);
2. the till database there, if it can be read (its WAL included), must not be ahead of the
   backup for any register (:class:`BackupBehind`; a chain signing a killed process left
   unfinished counts: the chain service may hold it signed), nor have switched a register
   of this till to another unit after it (:class:`SwitchedAfterBackup`), and each
   register's last receipt must be the backup's receipt of that number; without a
   readable one (a dead disk, a new machine), with one of another till, or with one that
   holds no receipt of the backup's registers (made afresh), the operator confirms that
   the backup's last receipts are the last ones printed (:class:`ConfirmationNeeded`);
3. in the copy, one transaction marks the print jobs the backup still had open (and its
   receipts without a job yet) ``skipped``, as the till the backup comes from printed them
   or was about to (a reprint prints a KOPIE), and journals ``till.restored``;
4. ``restore.pending`` is written (agent.restore_pending), naming the copy, the
   ``replaced-<UTC time>/`` directory and what was read of the current database; then the
   current database's files (-wal, -shm, -journal first) are moved into that directory,
   never deleted, the copy, fsynced, mode 0600 and owned as the data directory, becomes
   ``till.sqlite3``, and the marker is removed, the directory fsynced after each step.

While the marker is there nothing opens the till database (storage.db). Killed before its
end, the same restore run again finishes it from the marker (the files still in the data
directory into the same ``replaced-`` directory; the copy made anew if it is gone), without
--yes and without reading the half-moved database; :func:`abandon` puts the replaced files
back instead. Copies that killed restores left before their marker are removed at the next
restore's start.

A refusal leaves the data directory as it was, but for the lock file every command that may
write takes (a data directory this made is removed again).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shlex
import sqlite3
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.durable import fsync_directory
from agent.errors import InvalidSale, NotFound, RestorePending, StorageError
from agent.restore_check import (
    BackupBehind,
    BackupCopy,
    ConfirmationNeeded,
    CurrentTill,
    LastReceipt,
    SwitchedAfterBackup,
    UnitSwitch,
    compare,
    read_current,
)
from agent.restore_files import (
    copy_backup,
    digest,
    fsync_file,
    locked,
    move_aside,
    reason,
    replaced_name,
    till_files,
)
from agent.restore_pending import (
    SIDE_FILES,
    Abandoned,
    Pending,
    abandon_pending,
    clear_leftovers,
    is_copy,
    read_pending,
    remove_pending,
    write_pending,
)
from agent.restore_prints import SkippedPrints, skip_open_prints
from storage.db import DB_FILE, RESTORE_MARKER
from storage.journal import append_event
from storage.migrate import head_revision

__all__ = [
    "Abandoned",
    "BackupBehind",
    "ConfirmationNeeded",
    "Restored",
    "SwitchedAfterBackup",
    "abandon",
    "restore",
]

log = logging.getLogger(__name__)

EVENT = "till.restored"


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did."""

    backup: Path
    sha256: str
    size: int
    revision: str
    database: Path
    registers: tuple[LastReceipt, ...]
    replaced: Path | None  # where the replaced files are (None: there were none)
    current: CurrentTill
    skipped: SkippedPrints
    journal_seq: int
    created_data_dir: bool
    confirmed_by_operator: bool  # --yes stood in for a current database of this till
    resumed: bool = False  # it finished a restore a kill had interrupted
    leftovers: tuple[str, ...] = ()  # killed restores' copies it removed

    @property
    def migrates_on_start(self) -> bool:
        return self.revision != head_revision()

    @property
    def events_left_behind(self) -> tuple[int, int] | None:
        """The replaced database's journal events after the backup's last one (outage,
        check and printer events: the receipts were compared), first and last; they are
        only in the ``replaced-`` directory."""
        first, last = self.journal_seq, self.current.journal_seq  # ours took the first's seq
        return (first, last) if self.current.readable and last >= first else None

    @property
    def switches_left_behind(self) -> tuple[UnitSwitch, ...]:
        """The replaced database's unit switches that the backup's journal lacks: only in
        the ``replaced-`` directory (a database of this till that switched after the
        backup refuses it, so these are of a database the operator confirmed over)."""
        return self.current.switches

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": {"path": str(self.backup), "sha256": self.sha256, "size": self.size},
            "database": str(self.database),
            "schema_revision": self.revision,
            "migrates_on_start": self.migrates_on_start,
            "registers": [r.as_dict() for r in self.registers],
            "replaced": None if self.replaced is None else str(self.replaced),
            "replaced_last_numbers": _numbers(self.current),
            "replaced_unreadable": self.current.problem,
            "replaced_events_left_behind": self.events_left_behind,
            "replaced_unit_switches_left_behind": [s.as_dict() for s in self.switches_left_behind],
            "skipped_prints": self.skipped.as_list(),
            "journal_seq": self.journal_seq,
            "created_data_dir": self.created_data_dir,
            "confirmed_by_operator": self.confirmed_by_operator,
            "resumed": self.resumed,
            "removed_leftovers": list(self.leftovers),
        }


def restore(backup: Path, data_dir: Path, *, confirmed: bool, now: dt.datetime) -> Restored:
    """Restore ``backup`` into ``data_dir`` (see the module's docstring); or finish the
    restore of that backup that a kill interrupted (``restore.pending``).

    Args:
        confirmed: the operator checked the backup's last receipts against the last ones
            printed (``--yes``); needed only when the data directory holds no readable
            database of this till (not to finish a restore: it was checked then).
        now: the time of the journal event and of the ``replaced-`` directory's name.

    Raises:
        NotFound: no backup file there.
        InvalidSale: the backup is no regular file, is the till database itself, or has a
            -wal beside it (a copy of an open database); :class:`ConfirmationNeeded`.
        DataDirLocked: a service (or a command) holds the data directory.
        RestorePending: a restore of another backup did not finish there.
        StorageError: the backup is refused (damaged, ...) or the data directory cannot be
            used (no permission, full disk).
        BackupBehind, SwitchedAfterBackup: see there.
    """
    _check_source(backup, data_dir)
    with locked(data_dir) as (owner, created):
        try:
            pending = read_pending(data_dir)
            leftovers = clear_leftovers(data_dir, pending)
            if pending is None:
                pending = _marked(backup, data_dir, owner, now, confirmed, created, None)
                resumed = False
            else:
                pending = _resumed(backup, data_dir, pending, owner, now)
                resumed = True
            replaced = _finish(data_dir, pending, owner)
        except OSError as exc:
            raise StorageError(
                f"cannot restore {backup} into {data_dir}: {reason(exc)}{_unfinished(data_dir)}"
            ) from exc
    if pending.skipped:
        log.warning(
            "restore: print jobs skipped (reprint prints a KOPIE): %s", pending.skipped.shown()
        )
    return Restored(
        backup=backup,
        sha256=pending.sha256,
        size=pending.size,
        revision=pending.revision,
        database=data_dir / DB_FILE,
        registers=pending.registers,
        replaced=replaced,
        current=pending.current,
        skipped=pending.skipped,
        journal_seq=pending.journal_seq,
        created_data_dir=pending.created_data_dir,
        confirmed_by_operator=pending.confirmed_by_operator,
        resumed=resumed,
        leftovers=tuple(leftovers),
    )


def abandon(data_dir: Path) -> Abandoned:
    """Undo the restore into ``data_dir`` that did not finish: the database it replaced
    (its files, where they are) back in place, the restored copy and the marker removed.

    Raises:
        NotFound: no restore is pending there.
        DataDirLocked: a service (or a command) holds the data directory.
        StorageError: the files cannot be moved back (see :func:`abandon_pending`).
    """
    if not (data_dir / RESTORE_MARKER).exists():
        raise NotFound(f"no restore is pending in {data_dir} (there is no {RESTORE_MARKER})")
    with locked(data_dir) as _:
        try:
            return abandon_pending(data_dir)
        except OSError as exc:
            raise StorageError(
                f"cannot undo the restore in {data_dir}: {reason(exc)}{_unfinished(data_dir)}"
            ) from exc


def _marked(  # noqa: PLR0917 - one restore's values, passed on once
    backup: Path,
    data_dir: Path,
    owner: tuple[int, int],
    now: dt.datetime,
    confirmed: bool,
    created: bool,
    earlier: Pending | None,
) -> Pending:
    """The backup copied, checked and recorded in the copy (:func:`_prepared`), then the
    marker written that names it; a refusal or failure before the marker removes the
    copy."""
    tmp = data_dir / f".{DB_FILE}.{secrets.token_hex(6)}.tmp"
    try:
        pending = _prepared(backup, tmp, data_dir, owner, now, confirmed, created, earlier)
        write_pending(data_dir, pending)
    except BaseException:
        if not _named(data_dir, tmp):  # a marker that names it (its directory's fsync failed)
            for leftover in (tmp, *(Path(f"{tmp}{s}") for s in SIDE_FILES)):
                leftover.unlink(missing_ok=True)
        raise
    return pending


def _named(data_dir: Path, tmp: Path) -> bool:
    try:
        marker = read_pending(data_dir)
    except StorageError:  # unreadable: the copy stays for whoever looks at it
        return True
    return marker is not None and marker.copy == tmp.name


def _resumed(
    backup: Path, data_dir: Path, pending: Pending, owner: tuple[int, int], now: dt.datetime
) -> Pending:
    """The marker of the same backup: the restore goes on from it, its copy copied anew
    if it is gone (checked against the numbers the marker recorded). Another backup is
    refused: the one pending must be finished or abandoned first."""
    sha256, _ = digest(backup)
    if sha256 != pending.sha256:
        raise RestorePending(
            f"a restore of {pending.backup} (SHA-256 {pending.sha256[:16]}...) into"
            f" {data_dir} did not finish ({data_dir / RESTORE_MARKER}); {backup} is another"
            f" backup (SHA-256 {sha256[:16]}...). Finish that one first (`till-agent restore"
            f" {shlex.quote(pending.backup)} --data-dir {shlex.quote(str(data_dir))}`) or put"
            " back the database it replaced (`till-agent restore --abandon --data-dir"
            f" {shlex.quote(str(data_dir))}`), then restore this one; nothing was changed"
        )
    if is_copy(data_dir / DB_FILE, pending) or is_copy(data_dir / pending.copy, pending):
        return pending
    log.warning("restore: the copy %s is gone, copying %s again", pending.copy, backup)
    return _marked(backup, data_dir, owner, now, False, pending.created_data_dir, pending)


def _prepared(  # noqa: PLR0917 - one restore's values, passed on once
    backup: Path,
    tmp: Path,
    data_dir: Path,
    owner: tuple[int, int],
    now: dt.datetime,
    confirmed: bool,
    created: bool,
    earlier: Pending | None,
) -> Pending:
    """Steps 1-3 of the module's docstring on ``tmp``, fsynced; what the marker records.
    With ``earlier`` (a restore being finished) its replaced database's numbers stand in
    for the current one, which is moved aside in part or whole."""
    sha256, size = copy_backup(backup, tmp, owner)
    if earlier is not None and sha256 != earlier.sha256:
        raise StorageError(f"the backup {backup} changed while it was copied; nothing was changed")
    copy = BackupCopy(tmp, backup)
    with copy.opened():
        revision = copy.check()
        last, _ = copy.last_receipts()
        current = read_current(data_dir / DB_FILE) if earlier is None else earlier.current
        vouched = compare(copy, last, current, data_dir, confirmed or earlier is not None)
        left = tuple(s for s in current.switches if not copy.has_event(s.seq, s.hash))
    if earlier is not None:
        vouched = not earlier.confirmed_by_operator
        replaced = earlier.replaced
    else:
        replaced = replaced_name(data_dir, now).name
    event = {
        "backup": {"file": backup.name, "path": str(backup), "sha256": sha256, "size": size},
        "schema_revision": revision,
        "last_numbers": {r.register: r.number for r in last},
        "replaced": replaced if till_files(data_dir) or (data_dir / replaced).is_dir() else None,
        "replaced_last_numbers": _numbers(current),
        "replaced_journal_seq": current.journal_seq if current.readable else None,
        "confirmed_by_operator": not vouched,
    }
    skipped, seq, event_hash = _record(tmp, event, now)
    fsync_file(tmp)
    return Pending(
        copy=tmp.name,
        replaced=replaced,
        backup=os.path.abspath(backup),
        sha256=sha256,
        size=size,
        revision=revision,
        registers=tuple(last),
        current=CurrentTill(
            current.problem,
            current.last,
            journal_seq=current.journal_seq,
            switches=left,
        ),
        skipped=skipped,
        journal_seq=seq,
        journal_hash=event_hash,
        confirmed_by_operator=not vouched,
        created_data_dir=created,
        at=now.astimezone(dt.UTC).isoformat(),
    )


def _finish(data_dir: Path, pending: Pending, owner: tuple[int, int]) -> Path | None:
    """Step 4: what is left of the current database moved into the marker's ``replaced-``
    directory, the copy given the database's name, the marker removed; each fsynced.
    Where the replaced files are (None: there were none)."""
    target = data_dir / DB_FILE
    kept = data_dir / pending.replaced
    if not is_copy(target, pending):
        move_aside(data_dir, kept, owner)
        os.rename(data_dir / pending.copy, target)
        fsync_directory(data_dir)
    remove_pending(data_dir)
    return kept if kept.is_dir() else None


def _unfinished(data_dir: Path) -> str:
    if not (data_dir / RESTORE_MARKER).exists():
        return ""
    return (
        f"; {data_dir / RESTORE_MARKER} records the restore: the till database is not opened"
        " until the same restore is run again (it finishes it) or `till-agent restore"
        " --abandon` puts the replaced database back"
    )


def _check_source(backup: Path, data_dir: Path) -> None:
    try:
        found = backup.stat()
    except FileNotFoundError as exc:
        raise NotFound(f"no backup file {backup}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read the backup {backup}: {reason(exc)}") from exc
    if not backup.is_file():
        raise InvalidSale("BACKUP_FILE", "not-a-file", f"{backup} is not a regular file")
    with suppress(OSError):
        if os.path.samestat(found, (data_dir / DB_FILE).stat()):
            raise InvalidSale(
                "BACKUP_FILE", "is-the-database", f"{backup} is the till database itself"
            )
    wal = Path(f"{backup}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise InvalidSale(
            "BACKUP_FILE",
            "wal-beside",
            f"{wal} lies beside {backup}: it is a copy of a database that was open, whose"
            " last transactions are in that -wal file, not a backup. Make one with"
            ' `sqlite3 DATABASE ".backup FILE"` (README.md, Operations, Backup)',
        )


def _numbers(current: CurrentTill) -> dict[str, int] | None:
    return {r.register: r.number for r in current.last} if current.readable else None


def _record(tmp: Path, event: dict[str, Any], now: dt.datetime) -> tuple[SkippedPrints, int, str]:
    """In the copy, one transaction: the open print jobs skipped, ``till.restored``
    journaled (its sequence and hash returned: they tell the copy). The copy leaves WAL
    mode here (its -wal would be a file of the temporary name); the service turns it on
    again when it opens the database."""
    at = now.astimezone(dt.UTC).isoformat()
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        skipped = skip_open_prints(conn, at)
        event["skipped_prints"] = skipped.as_list()
        seq = append_event(conn, kind=EVENT, register_id=None, data=event, at=at)
        (digest,) = conn.execute("SELECT hash FROM journal WHERE seq = ?", (seq,)).fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot record the restore in the copy {tmp}: {exc}") from exc
    finally:
        conn.close()
    return skipped, seq, str(digest)

"""Spool ingestion: the POS drops sales as files and the agent answers with files.

The POS writes a sale (the contract of :mod:`agent.contract`) to a temporary name on the
same filesystem (a dotfile or ``*.tmp``), fsyncs it and renames it to ``in/NAME.json``.
The agent answers with ``out/NAME.result.json`` (the :class:`ReceiptResult`) or
``failed/NAME.error.json`` (``field``, ``rule``, ``message``; the sale itself is moved to
``failed/NAME.json``). NAME should be unique, e.g. the request_id: a sale arriving under
the name of an earlier one replaces that one's answer. Whatever else appears as
``in/NAME.json`` (a symbolic link, a directory, a pipe) is answered the same way, with the
rule ``regular-file``, and moved to ``failed/`` without being followed or read; so is a
file the agent may not read (its mode, owner or ACL), with the rule ``unreadable``. A name
ending in ``.result.json`` or ``.error.json`` is an answer's name, never a sale's (a sale
``X.error.json`` kept in ``failed/`` would take the place of ``X.json``'s answer): such a
file in ``in/`` is left there and logged once.

``in/``, ``out/`` and ``failed/`` are the POS's side: created group-writable and setgid
(mode 2770, whatever the umask), so a POS running as another user in the agent's group
can drop sales and remove answers. ``work/`` stays the agent's own. Under the shipped
systemd unit (``RestrictSUIDSGID=yes``) the agent may not set the setgid bit:
``systemd/till-agent.tmpfiles.conf`` creates them instead (or a setgid spool directory
passes the bit on to them); where neither did, the agent makes them 0770 and says so once.

A name is at most 255 bytes (UTF-8) on the filesystem, and the answer's temporary name is
30 bytes longer than NAME: a NAME of more than ``MAX_NAME_BYTES`` bytes cannot have its own
answer. Such a sale is answered under a shortened NAME (its first bytes, ``~`` and a hash
of the whole name) in ``failed/`` with the rule ``name-too-long``, and moved there under
that name. A file that cannot be claimed (whatever the reason) is logged once and skipped:
one file never stops the others.

Each step is atomic and the whole sequence is restartable, so a crash (even SIGKILL or a
power cut) between any two steps leaves exactly one answer per sale in the end:

1. claim: ``rename(in/NAME.json, work/NAME.json)``;
2. issue: ``handler(raw)``; the receipt service is idempotent on request_id, so running
   this again after a crash returns the same receipt;
3. answer: temp file in the answer's directory, fsync, rename, fsync the directory;
4. release: unlink the work file (or move it to ``failed/``).

Files found in ``work/`` are processed again (or only released when their answer already
exists). watchdog events are only a hint to rescan (reference/libraries.md A4): files
present at start produce no event and an event can be missed, so the worker also rescans
every ``rescan_s`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.clock import Clock, SystemClock
from agent.contract import ReceiptResult
from agent.durable import fsync_directory, replace_file
from agent.errors import (
    ConflictError,
    FiscalError,
    InvalidSale,
    RegisterStateError,
    StorageError,
    WaitsForUnit,
)
from agent.probe import Backoff

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_SALE_BYTES",
    "POS_DIR_MODE",
    "STORAGE_RETRY_S",
    "Handler",
    "Spool",
    "SpoolIngestor",
]

log = logging.getLogger(__name__)

MAX_SALE_BYTES = 1024 * 1024  # 500 lines of 80 characters are about 100 KiB
Handler = Callable[[bytes], ReceiptResult]
_SUFFIX = ".json"
_RESULT = ".result.json"
_ERROR = ".error.json"
# the longest name written for NAME is out/.NAME.result.json.<12 hex>.tmp (durable.py)
_LONGEST_EXTRA = len(".") + len(_RESULT) + len(".0123456789ab.tmp")
MAX_NAME_BYTES = 255 - _LONGEST_EXTRA  # of NAME, without .json
_SHORT_PREFIX_BYTES = 64
POS_DIR_MODE = 0o2770  # in/, out/, failed/: rwx for the agent and the POS's group, setgid
# a full disk (or database) heals without the sale: its files are retried every few
# seconds, not after the growing backoff, and first when new files come
STORAGE_RETRY_S = 2.0
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_STORAGE_LOG_EVERY = 30  # a storage retry is logged at its level at attempt 1, 31, 61...
_NOT_FILES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}
# never follow a link in in/ (it could name any file the agent may read), never wait for
# a writer of a pipe
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
# errors reading a sale that come from the file, not from the till's disk: answered, as
# retrying cannot help; any other error (EIO, a full disk) keeps the sale for a retry
_UNREADABLE_ERRNOS = {
    errno.EACCES,  # its mode, owner or ACL: the agent runs as its own user
    errno.EPERM,  # a security module's or the file system's refusal
    errno.ELOOP,  # a link: answered regular-file once the file is looked at again
    errno.EISDIR,  # these three: no regular file after all
    errno.ENXIO,
    errno.ENODEV,
    errno.EOVERFLOW,  # too large to open
}


def _shown(name: str) -> str:
    """A spool file's name (or path) for a log line: as it is when every character of it
    prints, else quoted with its other characters escaped as repr escapes them (``\\n``,
    ``\\x1b``, ``\\u202e``): the POS names the files, and a newline, an escape sequence
    or a bidi control in a name would forge or hide log lines."""
    return name if name.isprintable() else repr(name)


def _printable(error: object) -> str:
    """An error's text for a log line, escaped as :func:`_shown` escapes a name but not
    quoted: a refusal's message may quote the name (``name-too-long``, ``unreadable``)."""
    text = str(error)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _is_sale_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(_SUFFIX) and len(name) > len(_SUFFIX)


def _is_answer_name(name: str) -> bool:
    return name.endswith((_RESULT, _ERROR))


def _name_bytes(name: str) -> bytes:
    return os.fsencode(name)  # the bytes on disk, even for a name that is no valid UTF-8


def _too_long(name: str) -> bool:
    return len(_name_bytes(name.removesuffix(_SUFFIX))) > MAX_NAME_BYTES


def _answer_stem(name: str) -> str:
    """NAME of ``NAME.json``, or a shortened one (prefix ``~`` hash) if NAME is too long."""
    stem = name.removesuffix(_SUFFIX)
    raw = _name_bytes(stem)
    if len(raw) <= MAX_NAME_BYTES:
        return stem
    prefix = raw[:_SHORT_PREFIX_BYTES].decode("utf-8", "ignore")  # never half a character
    digest = hashlib.sha256(_name_bytes(name)).hexdigest()[:16]
    return f"{prefix}~{digest}"


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _remove(path: Path) -> bool:
    """Remove a file, link or (a directory a POS dropped as a sale) a whole directory."""
    try:
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
            return True
    except FileNotFoundError:
        return False
    return _unlink(path)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no such user here: its number
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _unreadable(name: str, info: os.stat_result, exc: OSError) -> InvalidSale:
    """The answer to a sale file the agent cannot read: the file, its mode and owners."""
    agent = _user(os.geteuid())
    mode, owner, group = stat.S_IMODE(info.st_mode), _user(info.st_uid), _group(info.st_gid)
    return InvalidSale(
        "(document)",
        "unreadable",
        f"the agent (user {agent}) cannot read {name}: {exc.strerror} (mode {mode:04o},"
        f" owner {owner}, group {group}); a sale must be a file the agent may read, e.g."
        " mode 0640 in in/ (which gives new files the agent's group)",
    )


def _refuse_unless_file(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _NOT_FILES.get(stat.S_IFMT(mode), "not a regular file")
        raise InvalidSale(
            "(document)",
            "regular-file",
            f"a sale is a regular file; this is {kind}, which is never followed or read",
        )


def _make_shared(directory: Path) -> bool:
    """Create a POS directory with :data:`POS_DIR_MODE`; False when it ends up without the
    setgid bit (refused): it then has 0770, group-writable without it, so a POS in the
    agent's group can still drop sales and remove answers.

    Raises:
        FileExistsError: the directory exists (its mode is left as it is).
    """
    # mkdir's mode is cut by the umask: only the group's bits are let through (its mode
    # has no others' bits to let through). No chmod is then needed where the directory
    # inherits the setgid bit from a setgid parent, and none may clear that bit: under
    # RestrictSUIDSGID a chmod can only give modes without it.
    umask = os.umask(0o077)
    os.umask(umask & 0o007)
    try:
        os.mkdir(directory, POS_DIR_MODE & ~stat.S_ISGID)
    finally:
        os.umask(umask)
    if directory.stat().st_mode & stat.S_ISGID:
        return True
    try:
        os.chmod(directory, POS_DIR_MODE)
    except PermissionError:
        return False
    return True


def _warn_not_setgid(directories: list[Path]) -> None:
    """The one WARNING for the POS directories made without their setgid bit."""
    made = ", ".join(f"{d} ({stat.S_IMODE(d.stat().st_mode):04o})" for d in directories)
    log.warning(
        "spool: made %s without the setgid bit of mode %04o (refused, as systemd's"
        " RestrictSUIDSGID=yes refuses it): files made there keep their maker's group, so a"
        " sale the POS writes into in/ with mode 0640 is not the agent's to read and is"
        " answered 'unreadable'; create these directories with"
        " systemd/till-agent.tmpfiles.conf (README, Operations) or run: chmod %04o %s",
        made,
        POS_DIR_MODE,
        POS_DIR_MODE,
        " ".join(str(d) for d in directories),
    )


class Spool:
    """The spool directories and the atomic file operations on them.

    Args:
        root: the spool directory; ``in/``, ``work/``, ``out/`` and ``failed/`` are created.
        max_bytes: larger sale files are answered with an error without being parsed.
    """

    def __init__(self, root: Path, *, max_bytes: int = MAX_SALE_BYTES) -> None:
        self.root = root
        self.inbox = root / "in"
        self.work = root / "work"
        self.out = root / "out"
        self.failed = root / "failed"
        self.max_bytes = max_bytes
        self._ignored: set[str] = set()  # answer-named files in in/, logged once each
        self.ensure_dirs()
        for directory in (self.out, self.failed):  # our temp files left by a crash
            for stale in directory.glob(".*.tmp"):
                _unlink(stale)

    def ensure_dirs(self) -> None:
        """Create the directories that are missing: the POS's side with mode 2770 (a
        directory that exists keeps the mode its operator gave it, or systemd-tmpfiles).

        Where the setgid bit is refused (systemd's ``RestrictSUIDSGID=yes`` in the shipped
        unit: EPERM), a new directory still gets it from a setgid spool directory; without
        that it gets 0770, one WARNING says what that costs the POS
        and how to fix it, and the agent goes on: a till that cannot start sells nothing.
        """
        self.work.mkdir(parents=True, exist_ok=True)
        refused: list[Path] = []
        for directory in (self.inbox, self.out, self.failed):
            try:
                shared = _make_shared(directory)
            except FileExistsError:
                continue
            if not shared:
                refused.append(directory)
        if refused:
            _warn_not_setgid(refused)

    def incoming(self) -> list[Path]:
        """Sales waiting in ``in/``, oldest first (modification time, then name)."""
        return self._sales(self.inbox)

    def claimed(self) -> list[Path]:
        """Sales claimed but not yet released (a crash or a retry), oldest first."""
        return self._sales(self.work)

    def _sales(self, directory: Path) -> list[Path]:
        """Everything named like a sale, files or not: whatever is no file is refused."""
        found: list[tuple[int, str]] = []
        answer_named: set[str] = set()
        with os.scandir(directory) as entries:
            for entry in entries:
                if not _is_sale_name(entry.name):
                    continue
                # in in/ only: one claimed by an earlier version is finished as claimed
                if directory == self.inbox and _is_answer_name(entry.name):
                    answer_named.add(entry.name)
                    continue
                with contextlib.suppress(FileNotFoundError):  # claimed or removed meanwhile
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        if directory == self.inbox:
            self._ignore(answer_named)
        return [directory / name for _, name in sorted(found)]

    def _ignore(self, names: set[str]) -> None:
        """Log each answer-named file in ``in/`` once while it stays there (``names``: the
        ones there now; one removed and dropped again is logged again)."""
        for name in sorted(names - self._ignored):
            log.warning(
                "spool: %s is left alone: a name ending in %s or %s is an answer's name;"
                " give the sale another name",
                _shown(str(self.inbox / name)),
                _RESULT,
                _ERROR,
            )
        self._ignored = names

    def result_path(self, name: str) -> Path:
        return self.out / (_answer_stem(name) + _RESULT)

    def error_path(self, name: str) -> Path:
        return self.failed / (_answer_stem(name) + _ERROR)

    def failed_path(self, name: str) -> Path:
        """Where a sale answered with an error is kept (shortened like its answer)."""
        return self.failed / (_answer_stem(name) + _SUFFIX)

    def claim(self, incoming: Path) -> Path | None:
        """Move a sale from ``in/`` to ``work/``; ``None`` if it is gone or its name is busy."""
        target = self.work / incoming.name
        if os.path.lexists(target):  # the same name is still being retried: take it after
            return None
        for stale in (self.result_path(incoming.name), self.error_path(incoming.name)):
            # removed before the claim: a crash in between must not pair the new sale
            # with the old answer
            if _unlink(stale):
                log.warning(
                    "spool: %s arrived again; its earlier answer was removed", _shown(stale.name)
                )
        _remove(self.failed_path(incoming.name))
        try:
            os.rename(incoming, target)  # a link is moved itself, never what it points to
        except FileNotFoundError:
            return None
        fsync_directory(self.work)
        return target

    def read(self, claimed: Path) -> bytes:
        """The sale's bytes.

        Raises:
            InvalidSale: its name is too long for its answer, it is no regular file (a link
                is not followed), the agent may not read it (rule ``unreadable``) or it is
                larger than ``max_bytes``.
            OSError: reading failed for a reason of the till's own (a disk error).
        """
        if _too_long(claimed.name):
            raise InvalidSale(
                "(file name)",
                "name-too-long",
                f"a spool file name is at most {MAX_NAME_BYTES} bytes (UTF-8) before .json; "
                f"this one is answered as {self.error_path(claimed.name).name}",
            )
        _refuse_unless_file(claimed.lstat().st_mode)
        try:
            raw = self._read_file(claimed)
        except OSError as exc:
            info = claimed.lstat()
            _refuse_unless_file(info.st_mode)  # ELOOP: a link since the check
            if exc.errno in _UNREADABLE_ERRNOS:
                raise _unreadable(claimed.name, info, exc) from exc
            raise
        if len(raw) > self.max_bytes:
            raise InvalidSale(
                "(document)", "max-size", f"a sale file is at most {self.max_bytes} bytes"
            )
        return raw

    def _read_file(self, claimed: Path) -> bytes:
        """Up to ``max_bytes + 1`` bytes of a regular file, never following a link."""
        fd = os.open(claimed, _OPEN_FLAGS)
        with os.fdopen(fd, "rb") as file:
            _refuse_unless_file(os.fstat(fd).st_mode)
            return file.read(self.max_bytes + 1)

    def answered(self, claimed: Path) -> bool:
        return self.result_path(claimed.name).exists() or self.error_path(claimed.name).exists()

    def succeed(self, claimed: Path, result: ReceiptResult) -> None:
        """Write the result, then release the sale."""
        data = result.model_dump_json(by_alias=True).encode() + b"\n"
        replace_file(self.result_path(claimed.name), data)
        self.release(claimed)

    def fail(self, claimed: Path, error: dict[str, str]) -> None:
        """Write the error, then move the sale beside it."""
        data = json.dumps(error, ensure_ascii=False).encode() + b"\n"
        replace_file(self.error_path(claimed.name), data)
        self.release(claimed)

    def release(self, claimed: Path) -> None:
        """Remove an answered sale from ``work/`` (a failed one is kept in ``failed/``)."""
        if self.result_path(claimed.name).exists():
            _unlink(claimed)
            return
        os.replace(claimed, self.failed_path(claimed.name))
        fsync_directory(self.failed)


def _error_of(exc: InvalidSale | FiscalError) -> dict[str, str]:
    if isinstance(exc, InvalidSale):
        return exc.as_dict()
    if isinstance(exc, ConflictError):
        return {"field": "request_id", "rule": "conflict", "message": str(exc)}
    rule = "register-state" if isinstance(exc, RegisterStateError) else "fiscal"
    return {"field": "register", "rule": rule, "message": str(exc)}


class _Wake(FileSystemEventHandler):
    """Turns every watchdog event into a wake-up; never raises (A4: that kills the observer)."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._wake.set()


class SpoolIngestor:
    """Claims, issues and answers spool files on a worker thread.

    Args:
        spool: the spool directories.
        handler: issues the receipt for the raw sale; raises InvalidSale (or FiscalError)
            for a sale that must be answered with an error. WaitsForUnit (the register
            waits for a signed receipt) and any other exception leave the sale claimed, and
            it is retried with ``backoff``.
        rescan_s: the longest time between two scans when no event arrives.
        on_progress: called after every scan and every answered file (feed a watchdog).
        backoff: the delays between retries of a file whose handler failed unexpectedly;
            a storage failure (the database or a full disk) is retried after at most
            ``STORAGE_RETRY_S``, and at once when new files arrive, before them.
        clock: monotonic time for the retry schedule.
    """

    def __init__(
        self,
        spool: Spool,
        handler: Handler,
        *,
        rescan_s: float = 2.0,
        on_progress: Callable[[], None] | None = None,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.spool = spool
        self.handler = handler
        self.rescan_s = rescan_s
        self.on_progress = on_progress
        self.backoff = backoff or Backoff(initial=1.0, cap=60.0)
        self.clock: Clock = clock or SystemClock()
        self.heartbeat = self.clock.monotonic()
        self._retries: dict[str, tuple[int, float, bool]] = {}  # name -> failures, due, storage
        self._storage_at = 0.0  # the shared retry of the files waiting for storage
        self._blocked = False  # this scan met a storage failure: it issues nothing more
        self._arrived: set[str] = set()  # the names in in/ at the last scan
        self._unclaimable: set[str] = set()  # names in in/ whose claim failed (logged once)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._observer_retry_at = 0.0

    # -- one scan -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Scan once: finish claimed files, then claim new ones; return the files answered.

        A storage failure (a full disk or database) stops the scan: nothing after the file
        that met it is issued or claimed, so the files waiting for storage keep their
        place in the numbering. They are retried together, in their order, at one time
        (at most ``STORAGE_RETRY_S`` later, at once when new files arrive), before any
        other file; meanwhile nothing else is issued.
        """
        with self._lock:
            incoming = self.spool.incoming()
            claimed = self.spool.claimed()
            arrived = {path.name for path in incoming}
            storage_now = bool(arrived - self._arrived)  # new files: retry before them
            self._arrived = arrived
            self._unclaimable &= arrived
            handled = 0
            self._blocked = False
            if self._waits_for_storage(claimed, storage_now=storage_now):
                self._beat()
                return 0
            for path in self._due(claimed):
                handled += self._process(path)
                if self._blocked or self._stop.is_set():
                    break
            for path in incoming:
                if self._blocked or self._stop.is_set():
                    break
                claimed_path = self._claim(path)
                if claimed_path is not None:
                    handled += self._process(claimed_path)
            self._beat()
            return handled

    def _claim(self, incoming: Path) -> Path | None:
        """Claim one file; a failure skips it (logged once, tried again every scan)."""
        try:
            claimed = self.spool.claim(incoming)
        except Exception as exc:
            if incoming.name not in self._unclaimable:
                self._unclaimable.add(incoming.name)
                log.error(
                    "spool: cannot claim %s; skipped: %s",
                    _shown(incoming.name),
                    _printable(exc),
                    exc_info=exc,
                )
            return None
        self._unclaimable.discard(incoming.name)
        return claimed

    @property
    def retrying(self) -> list[str]:
        """Names of the claimed files waiting for a retry."""
        return sorted(self._retries.copy())  # no lock: a scan may hold it for long

    def _waits_for_storage(self, claimed: list[Path], *, storage_now: bool) -> bool:
        """Forget the retries of files no longer claimed; True while files wait for
        storage and their shared retry is not due (``storage_now``: new files came)."""
        names = {path.name for path in claimed}
        for gone in set(self._retries) - names:
            del self._retries[gone]
        if storage_now or not any(storage for _, _, storage in self._retries.values()):
            return False
        return self._storage_at > self.clock.monotonic()

    def _due(self, claimed: list[Path]) -> list[Path]:
        """The claimed files to try now, in the spool's order: those waiting for storage
        (their retry is due) and those whose own retry is due."""
        now = self.clock.monotonic()
        due: list[Path] = []
        for path in claimed:
            _, at, storage = self._retries.get(path.name, (0, now, False))
            if storage or at <= now:
                due.append(path)
        return due

    def _process(self, claimed: Path) -> int:
        """Answer one claimed file; 1 if it left ``work/``, 0 if it waits for a retry."""
        if self._stop.is_set():
            return 0
        try:
            if self.spool.answered(claimed):
                self.spool.release(claimed)  # the crash came after the answer
            else:
                self._answer(claimed)
        except WaitsForUnit as exc:  # a valid sale for a register still waiting
            self._retry_later(claimed.name, exc, level=logging.WARNING)
            return 0
        except StorageError as exc:  # the till's disk or database failed, not the sale
            self._retry_later(claimed.name, exc, storage=True)
            return 0
        except Exception as exc:  # the file stays claimed: ingestion goes on
            full = isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS  # no room
            self._retry_later(claimed.name, exc, trace=not full, storage=full)
            return 0
        retried = self._retries.pop(claimed.name, None)
        if retried is not None:
            log.info(
                "spool: %s answered after %d failed attempts", _shown(claimed.name), retried[0]
            )
        self._beat()
        return 1

    def _answer(self, claimed: Path) -> None:
        try:
            raw = self.spool.read(claimed)
        except InvalidSale as exc:  # no regular file, unreadable or too large: never parsed
            log.warning("spool: %s refused unread: %s", _shown(claimed.name), _printable(exc))
            self.spool.fail(claimed, exc.as_dict())
            return
        try:
            result = self.handler(raw)
        except WaitsForUnit:
            raise
        except (InvalidSale, FiscalError) as exc:
            log.info("spool: %s rejected: %s", _shown(claimed.name), _printable(exc))
            self.spool.fail(claimed, _error_of(exc))
            return
        self.spool.succeed(claimed, result)
        log.debug("spool: %s -> receipt %s", _shown(claimed.name), result.number)

    def _retry_later(
        self,
        name: str,
        exc: Exception,
        *,
        level: int = logging.ERROR,
        trace: bool = False,
        storage: bool = False,
    ) -> None:
        """Keep the file claimed and try it again after the backoff; ``trace`` logs the
        traceback of an error nobody expected; ``storage``: the till's storage failed, the
        retry comes after at most ``STORAGE_RETRY_S`` (logged at ``level`` now and then),
        with every other file waiting for storage, and the scan stops."""
        failures = self._retries.get(name, (0, 0.0, False))[0] + 1
        delay = self.backoff.delay(failures - 1)
        if storage:
            delay = min(delay, STORAGE_RETRY_S)
            if failures % _STORAGE_LOG_EVERY != 1:
                level = logging.DEBUG
        at = self.clock.monotonic() + delay
        self._retries[name] = (failures, at, storage)
        if storage:
            self._wait_for_storage(at)
        message = "spool: %s not answered yet (attempt %d), retrying in %.1f s: %s"
        shown = _printable(exc)
        log.log(
            level, message, _shown(name), failures, delay, shown, exc_info=exc if trace else None
        )

    def _wait_for_storage(self, at: float) -> None:
        """Stop the scan; every file waiting for storage is retried at ``at``, together."""
        self._blocked = True
        self._storage_at = at
        for name, (failures, _, storage) in self._retries.copy().items():
            if storage:
                self._retries[name] = (failures, at, storage)

    def _next_wait(self) -> float:
        dues = [due for _, due, _ in self._retries.copy().values()]
        if not dues:
            return self.rescan_s
        return max(0.01, min(self.rescan_s, min(dues) - self.clock.monotonic()))

    def _beat(self) -> None:
        self.heartbeat = self.clock.monotonic()
        if self.on_progress is not None:
            try:
                self.on_progress()
            except Exception:
                log.exception("spool: the progress hook failed")

    # -- the worker -----------------------------------------------------------------------

    def start(self) -> None:
        """Start watching ``in/`` and the worker thread (it scans at once)."""
        if self._worker is not None:
            raise RuntimeError("the spool ingestor is already running")
        self._stop.clear()
        self._ensure_observer()  # watch first, then scan: no file falls in between (A4)
        self._worker = threading.Thread(target=self._loop, name="spool-ingest", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the observer and the worker; a file being issued is finished first."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:  # first: the worker is the one that (re)starts observers
            self._worker.join(timeout)
            self._worker = None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    def wake(self) -> None:
        """Scan now."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """The worker runs and the observer watches (health check)."""
        observer = self._observer
        worker = self._worker
        watching = observer is not None and observer.is_alive()
        return worker is not None and worker.is_alive() and watching

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # e.g. the spool directory was removed: never stop
                log.exception("spool: scan failed; retrying")
                with contextlib.suppress(OSError):
                    self.spool.ensure_dirs()
            self._ensure_observer()
            self._wake.wait(self._next_wait())

    def _ensure_observer(self) -> None:
        """(Re)start the observer; without one the periodic rescan still finds every file."""
        if self._stop.is_set() or (self._observer is not None and self._observer.is_alive()):
            return
        now = self.clock.monotonic()
        if now < self._observer_retry_at:
            return
        observer = Observer()
        try:
            observer.schedule(
                _Wake(self._wake),
                str(self.spool.inbox),
                event_filter=[
                    *(FileCreatedEvent, FileMovedEvent, FileClosedEvent),
                    *(DirCreatedEvent, DirMovedEvent),  # answered as not being a sale file
                ],
            )
            observer.start()
        except OSError as exc:  # inotify limits (A4): poll until a watch is possible
            log.warning("spool: cannot watch %s (%s); rescanning only", self.spool.inbox, exc)
            self._observer_retry_at = now + 60.0
            return
        old, self._observer = self._observer, observer
        if old is not None:
            log.warning("spool: the directory watch had stopped and was restarted")
            old.join(1.0)

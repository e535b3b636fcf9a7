"""Delivering rendered bytes to a printer: network (TCP 9100), USB, serial or a directory.

A transport only moves bytes (the network printer adds one notice, below). Every failure
leaves it as a :class:`PrinterError` naming the printer (translated once, here, in
:func:`printer_errors`), and every wait is bounded by a timeout, so a dead printer costs
at most a few seconds and never a receipt: the caller keeps the job and retries. Bytes
accepted by a printer are not yet paper printed.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import datetime as dt
import logging
import os
import select
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from agent.durable import fsync_directory, replace_file
from agent.errors import ConfigurationError, PrinterError
from agent.printing._escpos import escpos_module, quiet_root

if sys.platform == "linux":
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ  # = SIOCOUTQ: bytes sent but not yet ACKed
else:  # pragma: no cover - other platforms
    _SIOCOUTQ = None

# how long a printer that has acknowledged every byte may take to close the connection
# before the job counts as printed anyway (a printer that closes ends the wait at once)
CLOSE_WAIT = 0.5

# the file printer removes at most this many old jobs (with their previews) per job written
PRUNE_BATCH = 1000
_DAY = 86400.0

# sent ahead of the next job after a failed one the printer had taken part (or all) of:
# the paper above it, a broken receipt or a whole one, is void, and the job follows in
# full. ESC @ ends the broken job's modes (bold, size) and drops its unprinted line, and
# leaves the printer on its own code table: ASCII only.
INTERRUPTED_NOTICE = (
    b"\x1b@\n" + b"-" * 42 + b"\n"
    b"\x1bE\x01*** DRUCK ABGEBROCHEN ***\x1bE\x00\n"
    b"Der Ausdruck darueber ist ungueltig,\n"
    b"der Beleg wird neu gedruckt.\n"
    b"\x1bd\x06\x1dV\x00"  # feed past the cutter and cut
)

__all__ = [
    "INTERRUPTED_NOTICE",
    "PRUNE_BATCH",
    "FilePrinter",
    "NetworkPrinter",
    "Printer",
    "SerialPrinter",
    "UsbPrinter",
    "notice_file_name",
    "printer_errors",
]

log = logging.getLogger(__name__)


class Printer(Protocol):
    """Where print jobs go."""

    def send(self, data: bytes) -> None:
        """Deliver one job; raises :class:`PrinterError` (after at most the timeout)."""
        ...

    def close(self) -> None:
        """Release the connection or device; the next :meth:`send` opens it again."""
        ...


@contextlib.contextmanager
def printer_errors(printer: str) -> Iterator[None]:
    """Turn socket, file, pyusb, pyserial and escpos failures into :class:`PrinterError`.

    ValueError covers pyusb's ``NoBackendError`` (no libusb), RuntimeError escpos' "needs
    a library" complaint.
    """
    errors = (OSError, ValueError, RuntimeError, escpos_module("exceptions").Error)
    try:
        yield
    except PrinterError:
        raise
    except errors as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise PrinterError(f"printer {printer}: {detail}") from exc


class NetworkPrinter:
    """A printer listening on raw TCP (port 9100, "JetDirect"); one connection per job.

    A job counts as sent only once the printer's side has taken every byte: after
    sending it and closing our side, :meth:`send` waits (within the timeout) until the
    printer's TCP has acknowledged every byte and our end-of-job, and then briefly
    (:data:`CLOSE_WAIT`) for the printer to close the connection, which ends the wait at
    once. A reset or an error at any point, bytes still unacknowledged at the timeout, or
    the printer closing before it acknowledged everything fail the job, which stays queued.

    A failed job's connection is aborted (a reset), so the kernel drops the bytes the
    printer has not taken instead of delivering them once it reads again (out of paper,
    refilled) ahead of the retry: two originals. What the printer did take it prints;
    so the next job after such a failure starts with :data:`INTERRUPTED_NOTICE`, which
    voids the print above it. Without a ``notice_file`` only this object remembers that
    (a restart in between forgets it); a job cut off inside an image or a QR code may
    swallow the notice's bytes.

    With a ``notice_file`` (the print worker keeps one per printer in the data directory,
    :meth:`keep_notice_in`) the owed notice survives a restart or a kill: the file is
    written and fsynced before the failed job is reported, and removed (the directory
    fsynced) once the next job was taken, before that job is reported as printed; while it
    exists the next job starts with the notice.

    What cannot be detected: a printer whose TCP stack acknowledges the bytes and then
    loses them (a crash or power cut before the paper), and a printer that never reads
    but whose kernel buffers the whole job and keeps the connection open: both count as
    printed. Only Linux reports unacknowledged bytes (``SIOCOUTQ``); elsewhere the job
    counts as sent once the kernel has buffered it, unless the printer resets the
    connection within :data:`CLOSE_WAIT`, and any failure after connecting counts as
    taken in part.

    Args:
        host: the printer's address (an IP address avoids a DNS lookup, which the
            timeout does not bound).
        port: the raw printing port.
        timeout: seconds for connecting, separately for sending the whole job, and
            separately for the printer to acknowledge it.
        notice_file: where the owed notice is kept across restarts (None: in memory).
    """

    def __init__(
        self,
        host: str,
        port: int = 9100,
        *,
        timeout: float = 5.0,
        notice_file: Path | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.name = f"{host}:{port}"
        self._interrupted = False  # a failed job was taken in part: the paper shows it
        self.notice_file: Path | None = None
        if notice_file is not None:
            self._use_notice_file(notice_file)

    def keep_notice_in(self, directory: Path) -> None:
        """Keep the owed notice in ``directory`` (the data directory), in a file named
        after this printer's address, unless a ``notice_file`` was given already; a file
        left there by an earlier process means the next job starts with the notice."""
        if self.notice_file is None:
            self._use_notice_file(directory / notice_file_name(self.host, self.port))

    def _use_notice_file(self, path: Path) -> None:
        self.notice_file = path
        self._interrupted = self._interrupted or path.exists()

    def send(self, data: bytes) -> None:
        job = INTERRUPTED_NOTICE + data if self._interrupted else data
        taken = False
        try:
            with (
                printer_errors(self.name),
                socket.create_connection((self.host, self.port), timeout=self.timeout) as sock,
            ):
                delivery = _Delivery(sock, job)
                try:
                    delivery.send(self.timeout)
                    _await_acknowledgement(sock, self.name, self.timeout)
                except BaseException:
                    taken = delivery.taken()
                    _abort(sock)
                    raise
        except BaseException:
            if taken and not self._interrupted:  # the connection is reset: record it now
                self._interrupted = True
                self._write_notice_file()
            raise
        if self._interrupted:
            self._interrupted = False
            self._remove_notice_file()

    def close(self) -> None:
        """Nothing stays open between jobs."""

    def _write_notice_file(self) -> None:
        """Record (durably, before the failure is reported) that the next job owes the
        notice; a file that cannot be written leaves it in memory only, logged."""
        if self.notice_file is None:
            return
        text = (
            f"printer {self.name} took part of a failed job at {_utc_now()}: the next job"
            " starts with DRUCK ABGEBROCHEN\n"
        )
        try:
            replace_file(self.notice_file, text.encode())
        except OSError as exc:
            log.warning(
                "printer %s: cannot record the owed DRUCK ABGEBROCHEN notice in %s (%s):"
                " a restart before the next job is printed forgets it",
                self.name,
                self.notice_file,
                " ".join(str(exc).split()),
            )

    def _remove_notice_file(self) -> None:
        """The notice is on the paper: remove its file (durably, before the job that
        carried it is reported as printed)."""
        if self.notice_file is None:
            return
        try:
            self.notice_file.unlink(missing_ok=True)
            fsync_directory(self.notice_file.parent)
        except OSError as exc:
            log.warning(
                "printer %s: cannot remove %s (%s): the next start prints the DRUCK"
                " ABGEBROCHEN notice once more",
                self.name,
                self.notice_file,
                " ".join(str(exc).split()),
            )


def notice_file_name(host: str, port: int) -> str:
    """The name of a network printer's owed-notice file: ``print-notice-<host>-<port>``,
    with every character of the host but letters, digits, ``.`` and ``-`` as ``_``."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in ".-") else "_" for c in host)
    return f"print-notice-{safe}-{port}"


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Delivery:
    """One job on one connection, and how much of it the kernel has sent."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock, self.data = sock, data
        self.written = 0
        self.ended = False  # our FIN is sent: it counts in SIOCOUTQ until acknowledged

    def send(self, timeout: float) -> None:
        """Hand every byte to the kernel within ``timeout`` (else :class:`TimeoutError`),
        then end the job (our FIN)."""
        deadline = time.monotonic() + timeout
        view = memoryview(self.data)
        while self.written < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
            self.written += self.sock.send(view[self.written :])
        self.sock.shutdown(socket.SHUT_WR)
        self.ended = True

    def taken(self) -> bool:
        """The printer's TCP acknowledged some of the job, so it may print it; True where
        that is unknown (no ``SIOCOUTQ``)."""
        try:
            unacked = _unacknowledged(self.sock)
        except OSError:
            return True
        if unacked is None:
            return True
        return self.written + int(self.ended) - unacked > 0


def _abort(sock: socket.socket) -> None:
    """Make closing ``sock`` reset the connection: what the printer has not taken yet is
    dropped, never delivered later behind a retry of the same job."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _await_acknowledgement(sock: socket.socket, name: str, timeout: float) -> None:
    """Return once the peer has acknowledged every byte and our FIN and has closed (or
    not reset the connection within :data:`CLOSE_WAIT`); raise :class:`OSError` on a
    reset or error, :class:`PrinterError` when bytes stay unacknowledged past ``timeout``.

    Status bytes the printer sends are read and dropped, so closing sends no reset.
    """
    now = time.monotonic()
    deadline, acked_at, closed, pause = now + timeout, None, False, 0.0002
    while True:
        if error := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            raise OSError(error, os.strerror(error))
        unacked = _unacknowledged(sock)
        now = time.monotonic()
        if not unacked:  # 0, or None without SIOCOUTQ: as if acknowledged
            acked_at = now if acked_at is None else acked_at
            if closed or now >= min(deadline, acked_at + CLOSE_WAIT):
                return
        elif now >= deadline:
            raise PrinterError(
                f"printer {name}: {unacked} bytes not acknowledged within {timeout:g} s"
            )
        if closed:  # the socket stays readable at EOF: only the clock can wait
            time.sleep(pause)
        elif select.select([sock], [], [], pause)[0] and not sock.recv(4096):
            closed = True  # EOF (recv raises ConnectionResetError on a reset)
        pause = min(pause * 2, 0.01)


def _unacknowledged(sock: socket.socket) -> int | None:
    """Bytes (and FIN) sent but not acknowledged by the peer; None where unknown."""
    if _SIOCOUTQ is None:
        return None
    buffer = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    return int.from_bytes(buffer, sys.byteorder, signed=True)


class FilePrinter:
    """Each job becomes a new file ``<directory>/<n>.bin`` (n = 000001, 000002, ...).

    A job appears complete or not at all: it is written to a temporary file, flushed to
    disk and then linked under the next free number, which is never overwritten.

    The directory is scanned for the highest number once, at the first job, and the next
    number is kept in memory from then on, so a job costs the same with a million earlier
    jobs in the directory as with none. Only a number taken meanwhile by another writer
    (the link refuses it) costs a new scan.

    With ``keep_days`` a job and its preview are deleted once their file is that many days
    old (0: kept for ever, the directory grows by a job and its preview per print): after
    the first job of the process and then at most once a day, the directory's names are
    read (no file's time but the oldest ones'), and the jobs older than that are removed
    from the lowest number up, at most :data:`PRUNE_BATCH` per job written, so a large
    backlog is removed over the next jobs instead of holding up one. A job that cannot be
    removed is logged and never fails a print.

    Args:
        directory: where the jobs go (created on the first job).
        keep_days: days a job is kept; 0 keeps every job.
        clock: seconds that only go forward (``time.monotonic``), for the once a day.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        keep_days: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.name = str(self.directory)
        self.keep_days = keep_days
        self._clock = clock
        self._next: int | None = None  # the next free number, once the first job scanned
        self._prune_at: float | None = None  # when the directory is read again; None: now
        self._old: collections.deque[str] = collections.deque()  # stems to look at, lowest first

    def send(self, data: bytes) -> None:
        self.write(data)

    def write(self, data: bytes, *, png: bytes | None = None) -> Path:
        """Write one job, and its preview as ``<n>.png`` after it; return the job's path."""
        with printer_errors(self.name):
            self.directory.mkdir(parents=True, exist_ok=True)
            temp = self._temp_file(data)
            try:
                path = self._link_next(temp, ".bin")
            finally:
                temp.unlink(missing_ok=True)
            if png is not None:
                preview = self._temp_file(png)
                os.replace(preview, path.with_suffix(".png"))
            fsync_directory(self.directory)
        if self.keep_days > 0:
            self._prune()
        return path

    def _prune(self) -> None:
        """Remove up to :data:`PRUNE_BATCH` jobs older than ``keep_days`` (and their
        previews), reading the directory's names at most once a day."""
        now = self._clock()
        if not self._old:
            if self._prune_at is not None and now < self._prune_at:
                return
            self._prune_at = now + _DAY
            try:
                self._old = collections.deque(self._stems())
            except OSError as exc:
                log.warning(
                    "file printer %s: cannot read it to remove old jobs: %s", self.name, exc
                )
                return
        wall = time.time()
        cutoff = wall - self.keep_days * _DAY
        removed = looked = 0
        try:
            while self._old and looked < PRUNE_BATCH:
                looked += 1
                written = self._written_at(self._old[0])
                if written > wall:  # dated ahead (the clock ran ahead): kept, says nothing
                    self._old.popleft()  # of the later jobs' age
                    continue
                if written >= cutoff:  # this one and the later ones
                    self._old.clear()
                    break
                for suffix in (".bin", ".png"):
                    (self.directory / f"{self._old[0]}{suffix}").unlink(missing_ok=True)
                self._old.popleft()
                removed += 1
        except OSError as exc:
            self._old.clear()  # tried again in a day
            log.warning("file printer %s: cannot remove an old job: %s", self.name, exc)
        if removed:
            log.info(
                "file printer %s: removed %d job(s) older than %d day(s)%s",
                self.name,
                removed,
                self.keep_days,
                ", more with the next job" if self._old else "",
            )

    def _stems(self) -> list[str]:
        """The numbers (as named) of the jobs and previews in the directory, lowest first."""
        with os.scandir(self.directory) as entries:
            stems = {
                stem
                for e in entries
                if (stem := e.name.removesuffix(".bin").removesuffix(".png")) != e.name
                and stem.isascii()
                and stem.isdigit()
            }
        return sorted(stems, key=int)

    def _written_at(self, stem: str) -> float:
        """When job ``stem`` was written (its preview's time without its job); gone: 0."""
        for suffix in (".bin", ".png"):
            with contextlib.suppress(FileNotFoundError):
                return (self.directory / f"{stem}{suffix}").stat().st_mtime
        return 0.0

    def close(self) -> None:
        """Nothing stays open between jobs."""

    def _temp_file(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix=".job-", suffix=".tmp", dir=self.directory)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return Path(name)

    def _link_next(self, temp: Path, suffix: str) -> Path:
        if self._next is None:
            self._next = self._highest(suffix) + 1
        number = self._next
        while True:
            path = self.directory / f"{number:06d}{suffix}"
            try:
                os.link(temp, path)
            except FileExistsError:  # another writer took it (or it was put there by hand)
                number = max(number, self._highest(suffix)) + 1
            else:
                self._next = number + 1
                return path

    def _highest(self, suffix: str) -> int:
        """The highest job number in the directory, 0 for none: one scan of it."""
        with os.scandir(self.directory) as entries:
            stems = (e.name.removesuffix(suffix) for e in entries if e.name.endswith(suffix))
            return max((int(s) for s in stems if s.isascii() and s.isdigit()), default=0)


class _EscposDevice(abc.ABC):
    """A device held open by a python-escpos printer object between jobs.

    After a failure the device is dropped, so the next job opens it afresh (the printer
    may have been switched off and on, or plugged into another port).
    """

    name: str
    _printer: Any = None

    @abc.abstractmethod
    def _open(self) -> Any:
        """Open the escpos printer object of this device."""

    def send(self, data: bytes) -> None:
        with printer_errors(self.name):
            try:
                if self._printer is None:
                    with quiet_root():  # escpos logs "printer enabled" on the root logger
                        self._printer = self._open()
                self._printer._raw(data)
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        printer, self._printer = self._printer, None
        if printer is not None:
            with printer_errors(self.name), quiet_root():
                self._release(printer)

    def _release(self, printer: Any) -> None:
        printer.close()

    def _drop(self) -> None:
        with contextlib.suppress(PrinterError):
            self.close()


def _require(kind: str, extra: str) -> Any:
    printer_class = getattr(escpos_module("printer"), kind)
    if not printer_class.is_usable():
        raise ConfigurationError(
            f"{kind} printing needs py{extra}: pip install 'till-agent[{extra}]'"
        )
    return printer_class


class UsbPrinter(_EscposDevice):
    """A USB printer (python-escpos ``Usb``, needs pyusb and libusb).

    Args:
        vendor_id, product_id: the USB ids (``lsusb``), e.g. ``0x04B8, 0x0202``.
        timeout: seconds one write may take.
        in_ep, out_ep: the endpoints (the escpos defaults suit most Epson models).

    Raises:
        ConfigurationError: pyusb is not installed.
    """

    def __init__(
        self,
        vendor_id: int,
        product_id: int,
        *,
        timeout: float = 5.0,
        in_ep: int = 0x82,
        out_ep: int = 0x01,
    ) -> None:
        self._usb = _require("Usb", "usb")
        self.vendor_id, self.product_id = vendor_id, product_id
        self.timeout, self.in_ep, self.out_ep = timeout, in_ep, out_ep
        self.name = f"usb {vendor_id:04x}:{product_id:04x}"

    def _open(self) -> Any:
        printer = self._usb(
            self.vendor_id,
            self.product_id,
            timeout=max(1, round(self.timeout * 1000)),  # pyusb counts ms; 0 = wait forever
            in_ep=self.in_ep,
            out_ep=self.out_ep,
        )
        printer.open(raise_not_found=True)
        return printer


class SerialPrinter(_EscposDevice):
    """A serial printer (python-escpos ``Serial``, needs pyserial).

    Args:
        device: the port, e.g. ``/dev/ttyUSB0``.
        baudrate: as set on the printer (DIP switches or its utility).
        timeout: seconds one write may take (escpos sets only the read timeout).

    Raises:
        ConfigurationError: pyserial is not installed.
    """

    def __init__(self, device: str, baudrate: int = 9600, *, timeout: float = 5.0) -> None:
        self._serial = _require("Serial", "serial")
        self.device, self.baudrate, self.timeout = device, baudrate, timeout
        self.name = f"serial {device}"

    def _open(self) -> Any:
        printer = self._serial(devfile=self.device, baudrate=self.baudrate, timeout=self.timeout)
        printer.open(raise_not_found=True)
        # without a write timeout a printer holding DSR low blocks write() for ever
        printer.device.write_timeout = self.timeout
        return printer

    def _release(self, printer: Any) -> None:
        # not escpos' close(): its flush() waits without limit for a stalled printer; the
        # kernel's close waits at most its closing_wait (30 s) for the bytes to drain
        port, printer._device = printer._device, False
        if port:
            port.close()

    def _drop(self) -> None:
        # after a failure, discard what was not sent so closing the port does not wait
        port = None if self._printer is None else self._printer._device
        if port:
            with contextlib.suppress(OSError):
                port.reset_output_buffer()
        super()._drop()

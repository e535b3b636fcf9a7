"""Printing after the commit (invariant 1): a worker that never blocks or loses a receipt.

Each committed receipt gets one ``print_jobs`` row holding its ESC/POS bytes until the
printer has taken them (rendered once, so every retry sends the same bytes; a printed
job keeps no bytes, and a reprint renders the stored receipt again, marked as a copy).
A printer that fails is journaled (once per failure streak), retried every ``retry_s``
seconds and shown in the status (logged at WARNING once per failure streak, its recovery
at INFO); the receipts keep coming meanwhile. Without a printer (kind ``none``) the
status says ``disabled`` and a reprint is refused. After a crash, receipts that have no
job yet are found by a scan and printed then. Every job, original or copy, starts with
the configured header (the business's name, ``[printer] header``); the stored receipt
does not carry it. The jobs of one receipt print in order, the original first, then the
copies by number, also when a copy was asked for before the worker reached the receipt,
across a restart and after a failed attempt (see :mod:`agent.printing.jobs`); the jobs of
different receipts keep the order they were queued in. An ``unsigned`` receipt prints as
it stands when it prints: one remedied before its job was made, or while its job
(original or copy) waited for the printer, says what became of it, not the promise its
stored text ends with.

A job the printer took is sent once per process: if recording it as printed fails (a
locked, full or read-only database), only the record is retried, with backoff, and
nothing else is sent meanwhile; so after a restart at most that one job prints again
(at least once, never lost). A pass beats ``on_progress`` after each job it renders or
sends and starts no new job after ``pass_s`` seconds: a backlog behind a slow printer
never silences the service watchdog, and the loop comes back at once for the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.api_backend import PrinterOut
from agent.errors import FiscalError, PrinterError, StorageError
from agent.loop import BackgroundLoop
from agent.printing import EscposOptions, NullPrinter, Printer, render_escpos, render_png
from agent.printing import jobs as print_jobs
from agent.printing.jobs import QUEUED_PRINTS
from agent.printing.transport import FilePrinter, NetworkPrinter
from agent.receipt_view import Resolution, resolution_of, result_from_row
from agent.receipts import ReceiptService

__all__ = ["PrintWorker"]

log = logging.getLogger(__name__)

_RENDER_BATCH = 200  # receipts per register and pass
_SEND_BATCH = 100
_NO_PRINTER = "no printer is configured ([printer] kind = none): nothing was printed"


@dataclass(frozen=True, slots=True)
class _Sent:
    """A job the printer took whose ``printed`` record is not stored yet."""

    id: int
    register_id: str
    number: int
    recovered: bool  # the first job after a failure streak: its record journals that


def _log_not_printed(register_id: str, last: int) -> None:
    log.info(
        "register %s: receipts 1 to %d were issued before printing was set up and are not"
        " printed; `till-agent reprint %s NUMBER` prints a copy of one",
        register_id,
        last,
        register_id,
    )


class PrintWorker:
    """Renders and prints committed receipts in a thread of its own.

    Args:
        service: the receipt service (its write connection stores the jobs).
        printer: where the bytes go; a network printer keeps the notice it owes after a
            job it took in part (DRUCK ABGEBROCHEN) in the data directory.
        retry_s: seconds between attempts while the printer fails.
        escpos: the printer model's code table and QR settings (``[printer.escpos]``).
        header: the lines printed centred above every receipt and copy, the business's
            name and address (``[printer] header``; § 132a Abs 3 BAO).
        on_progress: called after each job rendered or sent and after each pass (feeds
            the service watchdog).
        pass_s: a pass starts no new job after this many seconds (it always sends one);
            the loop comes back at once for the rest.
        print_startbeleg: a register that never had a print job and whose only receipt
            is its Startbeleg (set up with ``till-agent init`` before the first ``run``)
            is printed from its start, the Startbeleg too; ``till-agent run`` sets it.
            Otherwise (and for a register with more receipts) printing starts after its
            last receipt.
    """

    def __init__(
        self,
        service: ReceiptService,
        printer: Printer,
        *,
        retry_s: float = 30.0,
        escpos: EscposOptions | None = None,
        header: Sequence[str] = (),
        on_progress: Callable[[], None] | None = None,
        pass_s: float = 10.0,
        print_startbeleg: bool = False,
    ) -> None:
        self.service = service
        self.printer = printer
        if isinstance(printer, NetworkPrinter):  # an owed DRUCK ABGEBROCHEN survives a restart
            printer.keep_notice_in(service.db.path.parent)
        self.retry_s = retry_s
        self.escpos = escpos or EscposOptions()
        self.header = tuple(header)
        self.on_progress = on_progress
        self.pass_s = pass_s
        self.state: str = "ready"
        self.last_error: str | None = None
        self._cursor: dict[str, int] = {}
        self._next_try = 0.0
        self._sent: dict[int, _Sent] = {}  # taken by the printer, record not stored yet
        self._record_failures = 0
        self._record_retry_at = 0.0
        self._more = False  # the last pass left work: the loop comes back at once
        self._loop = BackgroundLoop("printer", self._step, max_wait=1.0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # a pass starts no new job once it is set
        self._init_cursors(print_startbeleg)

    def _init_cursors(self, print_startbeleg: bool) -> None:
        """Print from the last job on. A register that never had a job gets a ``skipped``
        job for its current last receipt: receipts issued before printing was set up are
        not printed (logged once, at INFO), and every later one is found even after a
        crash; with ``print_startbeleg``, one whose only receipt is its Startbeleg gets
        the job for number 0 instead (see :meth:`print_from_start`). Without a printer
        (kind ``none``), jobs an earlier printer left open are ``skipped``, not recorded
        as printed (a reprint prints one once a printer is set up again)."""
        with self.service.db.write_connection().transaction() as conn:
            if isinstance(self.printer, NullPrinter) and (left := print_jobs.skip_open(conn)):
                shown = ", ".join(f"{reg} {number}" for reg, number, _ in left[:10])
                log.warning(
                    "printing is off ([printer] kind = none): %d print job(s) an earlier"
                    " printer left open are skipped (receipts %s%s); `till-agent reprint`"
                    " prints a copy once a printer is configured",
                    len(left),
                    shown,
                    ", ..." if len(left) > 10 else "",
                )
            if reordered := print_jobs.reorder_open(conn):  # an earlier release's queue
                log.info("the copies of %d receipt(s) now print after their original", reordered)
            for reg, last in conn.execute("SELECT id, last_number FROM registers").fetchall():
                printed = print_jobs.last_original(conn, reg)
                if printed is None:
                    printed = 0 if last == 1 and print_startbeleg else int(last)
                    print_jobs.add_job(conn, reg, printed, 0, b"", "skipped")
                    if printed > 1:
                        _log_not_printed(reg, printed)
                self._cursor[reg] = int(printed)

    def print_from_start(self, register_id: str) -> None:
        """Print every receipt of a register about to be created, its Startbeleg too.

        Called before the register's first receipt is committed: the ``skipped`` job for
        number 0 tells a restarted worker that this register was printed from its start,
        so a crash between the Startbeleg's commit and its first job loses no print.
        """
        with self.service.db.write_connection().transaction() as conn:
            print_jobs.add_job(conn, register_id, 0, 0, b"", "skipped")
        self._cursor.setdefault(register_id, 0)

    def notify(self) -> None:
        """A receipt was committed: look for work now (without a printer, the next regular
        pass records it as skipped: no work per receipt)."""
        if not isinstance(self.printer, NullPrinter):
            self._loop.wake()

    def status(self) -> PrinterOut:
        with self.service.db.read_connection() as conn:
            queued = int(conn.execute(QUEUED_PRINTS).fetchone()[0])
        return PrinterOut(state=self.shown_state, queued=queued, last_error=self.last_error)

    @property
    def shown_state(self) -> Literal["ready", "offline", "disabled"]:
        """The state as status pages show it (``kind = "none"`` is disabled, not ready)."""
        if isinstance(self.printer, NullPrinter):
            return "disabled"
        return "ready" if self.state == "ready" else "offline"

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Store the records of jobs already sent, create the jobs of new receipts and send
        what is queued, starting no new job after :attr:`pass_s`; returns the jobs sent."""
        deadline = time.monotonic() + self.pass_s
        printed = 0
        with self._lock:
            self._more = False
            if self._record_sent():  # nothing more is sent while a record is missing
                self._create_jobs(deadline)
                printed = self._send_queued(deadline)
        self._beat()
        return printed

    def _beat(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    def _create_jobs(self, deadline: float) -> None:
        """One job per new receipt, rendered first, then stored in one transaction.

        Jobs are bookkeeping: rendered again from the receipt if a power cut loses them,
        so their commit does not wait for an fsync of its own. Without a printer (kind
        ``none``) a receipt gets a ``skipped`` job and nothing is rendered.
        """
        with self.service.db.read_connection() as conn:
            registers = [str(r[0]) for r in conn.execute("SELECT id FROM registers")]
            missing = {
                reg: conn.execute(
                    print_jobs.MISSING, (self._cursor.setdefault(reg, 0), reg, _RENDER_BATCH)
                ).fetchall()
                for reg in registers
            }
            # an unsigned receipt remedied before its job: the job says how (no query for
            # any other receipt)
            found = [
                (reg, row, resolution_of(conn, row)) for reg in registers for row in missing[reg]
            ]
        self._more = any(len(rows) == _RENDER_BATCH for rows in missing.values())
        drop = isinstance(self.printer, NullPrinter)
        jobs: list[tuple[str, int, bytes]] = []
        for reg, row, resolution in found:
            if jobs and self._past(deadline):  # the rest in the next pass
                self._more = True
                break
            data = b"" if drop else self._render(row, resolution)
            jobs.append((reg, int(row["number"]), data))
            self._beat()
        if not jobs:
            return
        state = "skipped" if drop else "queued"
        with self.service.db.write_connection().transaction(durable=False) as conn:
            for reg, number, data in jobs:
                print_jobs.add_original(conn, reg, number, data, state)
        for reg, number, _ in jobs:
            self._cursor[reg] = number

    def _past(self, deadline: float) -> bool:
        return time.monotonic() >= deadline or self._stopping.is_set()

    def _render(self, row: Any, resolution: Resolution | None) -> bytes:
        result = result_from_row(row, resolution)
        return render_escpos(result, options=self.escpos, header=self.header)

    def _send_queued(self, deadline: float) -> int:
        """Send the open jobs in order until one fails, its record cannot be stored, the
        pass is past ``deadline`` (after the first job) or the worker stops; a copy whose
        original is still to come waits for a later pass."""
        if time.monotonic() < self._next_try:
            return 0
        with self.service.db.read_connection() as conn:
            jobs = [
                job
                for job in conn.execute(print_jobs.OPEN_JOBS, (_SEND_BATCH,)).fetchall()
                if job["id"] not in self._sent  # taken by the printer: never sent again
            ]
            unsigned = print_jobs.of_unsigned(conn, jobs)
            held = print_jobs.held_copies(jobs, self._cursor)
        printed = 0
        for job in jobs:
            if job["id"] in held:  # a copy waits for its original
                continue
            # the rest in the next pass: one job at least, none once the worker stops
            if self._stopping.is_set() or (printed and time.monotonic() >= deadline):
                self._more = True
                return printed
            try:
                self._send(job, unsigned=job["id"] in unsigned)
            except PrinterError as exc:
                self._failed(job, str(exc))
                return printed
            recovered = self.state != "ready"
            self._sent[job["id"]] = _Sent(job["id"], job["register_id"], job["number"], recovered)
            if recovered:
                log.info("printer recovered, printing again (it failed with: %s)", self.last_error)
            self.state, self.last_error = "ready", None
            printed += 1
            self._beat()
            if not self._record_sent():
                return printed
        self._more = self._more or len(jobs) == _SEND_BATCH
        return printed

    def _send(self, job: Any, *, unsigned: bool) -> None:
        """Send ``job``'s bytes; an ``unsigned`` receipt's job remedied since its bytes
        were rendered (the printer was off, or the copy was asked for before) is rendered
        again as the receipt stands now: the paper says what became of it, never the
        promise that was settled meanwhile."""
        data, copy = job["data"], job["copy"] > 0
        register_id, number = job["register_id"], job["number"]
        result = self.service.get(register_id, number) if unsigned else None
        if result is not None and result.resolution is not None:
            data = render_escpos(result, copy=copy, options=self.escpos, header=self.header)
        if isinstance(self.printer, FilePrinter):  # the development printer: with a preview
            # as its bytes: the receipt as it stands now (a resolution only changes unsigned ones)
            result = result or self.service.get(register_id, number)
            preview = render_png(result, copy=copy, header=self.header)
            self.printer.write(data, png=preview)
        else:
            self.printer.send(data)

    def _record_sent(self) -> bool:
        """Store the ``printed`` record of the jobs the printer took (dropping their bytes);
        False while that fails: retried with backoff (at most ``retry_s`` apart)."""
        if not self._sent:
            return True
        if time.monotonic() < self._record_retry_at:
            return False
        try:
            for sent in list(self._sent.values()):
                self._record(sent)
                del self._sent[sent.id]
        except StorageError as exc:
            self._record_failed(exc)
            return False
        if self._record_failures:
            log.info("the printed jobs are recorded again; none was sent twice")
            self._record_failures, self._record_retry_at = 0, 0.0
        return True

    def _record(self, sent: _Sent) -> None:
        # a lost record prints the receipt again (at least once); a journal event is durable
        with self.service.db.write_connection().transaction(durable=sent.recovered) as conn:
            print_jobs.record_printed(
                conn,
                sent.id,
                register_id=sent.register_id,
                number=sent.number,
                recovered=sent.recovered,
            )

    def _record_failed(self, exc: StorageError) -> None:
        self._record_failures += 1
        wait = min(self.retry_s, 2.0 ** (self._record_failures - 1))
        self._record_retry_at = time.monotonic() + wait
        jobs = ", ".join(f"{s.register_id} {s.number}" for s in self._sent.values())
        if self._record_failures == 1:
            log.error(
                "the printer took receipt %s, but recording that failed: %s; it is not sent"
                " again, and nothing else is printed until the record is stored (retried"
                " up to every %g s)",
                jobs,
                exc,
                self.retry_s,
            )
        else:
            log.debug("recording printed receipt %s failed again: %s", jobs, exc)

    def _failed(self, job: Any, message: str) -> None:
        self._next_try = time.monotonic() + self.retry_s
        with self.service.db.write_connection().transaction() as conn:
            print_jobs.record_failed(
                conn,
                job["id"],
                message,
                register_id=job["register_id"],
                number=job["number"],
                first=self.state == "ready",  # journal the start of a failure streak only
            )
        if self.state == "ready":
            log.warning("printer failed, will retry every %.0f s: %s", self.retry_s, message)
        self.state, self.last_error = "offline", message

    # -- reprint --------------------------------------------------------------------------

    def reprint(self, register_id: str, number: int) -> int:
        """Queue a copy (marked as such) of a printed or unprinted receipt; its copy number.

        The copy prints after the receipt's original and its earlier copies. One asked for
        while the original has not printed yet (the printer is off, or the worker has not
        reached the receipt) is queued all the same and prints after it: the caller asked
        for one more paper and is answered with its copy number; whether the customer
        still wants it once the original comes out, only the cashier knows.

        The copy is rendered from the stored receipt as it stands now (an unsigned one
        says how it was remedied), with today's header and printer options: a printed job
        keeps no bytes.

        Raises:
            FiscalError: there is no printer (kind ``none``).
            NotFound: the register has no such receipt.
        """
        if isinstance(self.printer, NullPrinter):
            raise FiscalError(_NO_PRINTER)
        result = self.service.get(register_id, number)
        data = render_escpos(result, copy=True, options=self.escpos, header=self.header)
        with self.service.db.write_connection().transaction() as conn:
            copy = print_jobs.next_copy(conn, register_id, number)
            print_jobs.add_job(conn, register_id, number, copy, data)
        self._next_try = 0.0
        self.notify()
        return copy

    # -- thread ---------------------------------------------------------------------------

    def _step(self) -> float:
        self.run_once()
        return 0.0 if self._more else self.retry_s

    def start(self) -> None:
        """Print in the background (``till-agent run``)."""
        self._loop.start()

    def stop(self) -> None:
        """Stop after the job being sent (and its record): the rest waits for the next
        start."""
        self._stopping.set()
        self._loop.stop()

"""``till-agent run``: one process for ingestion, receipts, probe, timers and printing.

Start order: open (lock, check, migrate) the till database -> units -> receipt service ->
sd_notify READY (nothing networked has happened yet) -> what a wrong configuration makes
fail (printer, backup and spool directories, API token, the API's address tried once) ->
register (its Startbeleg waits if the unit cannot sign) -> printer, probe, timers, spool,
local API (a TCP one names its address in ``<data_dir>/api-address``, see
agent.local_api). So a taken port or a missing socket directory stops the start before
the register is created and its signed Startbeleg issued. SIGTERM stops the
ingestion first (the receipt in flight is finished and answered), then the rest, and
closes the database. WATCHDOG=1 is sent only while every loop makes progress.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from agent import sdnotify
from agent.api import ApiServer, create_app, serve
from agent.api_backend import Issued, ServiceBackend
from agent.backup import DepBackups
from agent.checks import CheckWatch
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig, ensure_api_token
from agent.contract import ReceiptResult
from agent.durable import fsync_directory
from agent.errors import ConfigurationError
from agent.local_api import address_file, forget_address, publish_address
from agent.log_limit import RateLimitedFilter
from agent.loop import BackgroundLoop
from agent.print_worker import PrintWorker
from agent.printing import open_printer
from agent.probe import Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit, software_unit_files
from agent.signing.config import DEV_UNIT, DEV_ZDA, moved_files, stored_in
from agent.signing.registry import (
    OPEN_TIMEOUT_S,
    UnitRegistry,
    UnopenedUnit,
    active_register_units,
    development_register,
    open_in_time,
    other_units,
    refuse_other_zda,
    register_unit_ids,
    signing_units,
    store_moved_files,
    store_unit,
)
from agent.spool import Spool, SpoolIngestor
from storage.db import TillDB, open_till_db

__all__ = ["DEV_UNIT", "TillService"]

log = logging.getLogger(__name__)

CLOSINGS_EVERY_S = 60.0
BACKUPS_EVERY_S = 60.0


# below this soft limit on open files the service does not rely on: sockets, database,
# spool and printer all take descriptors (systemd's default soft limit is 1024)
FD_LIMIT_CAP = 65536
ACCEPT_ERROR = "socket.accept() out of system resource"


# asyncio logs it for every retry while the process is out of descriptors
ACCEPT_ERROR_FILTER = RateLimitedFilter(ACCEPT_ERROR)


def _raise_open_files_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most FD_LIMIT_CAP), logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_CAP if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT_CAP)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files limit stays %d (cannot raise it to %d: %s)", soft, target, exc)
            return
        log.info("open files limit raised from %d to %d", soft, target)
    else:
        log.info("open files limit %d", soft)


class _Backend(ServiceBackend):
    """The API/spool backend that also tells the printer about each new receipt."""

    def __init__(self, till: TillService) -> None:
        super().__init__(
            till.receipts,
            thresholds=till.config.outage.thresholds(),
            printer=till.printer.status,
            backups=till.backups,
            spool_dir=till.config.spool.dir if till.config.spool.enabled else None,
        )
        self.till = till

    def issue_sale(self, raw: bytes) -> ReceiptResult:
        result = super().issue_sale(raw)
        self.till.printer.notify()
        return result

    def issue(self, raw: bytes) -> Issued:
        issued = super().issue(raw)
        self.till.printer.notify()
        return issued

    def zero_receipt(self, register: str, request_id: str | None = None) -> Issued:
        issued = super().zero_receipt(register, request_id)
        self.till.printer.notify()
        return issued

    def reprint(self, register: str, number: int) -> int:
        return self.till.printer.reprint(register, number)


def _restored(config: UnitConfig, data_dir: Path) -> UnitConfig:
    """A configured unit whose files are named where they were before the data directory
    was restored elsewhere (gone now, found in ``<data_dir>/keys/``), with those files: the
    unit as the start stored it from them, not a changed one that cannot be opened."""
    moved = moved_files(config, data_dir)
    for name, found in moved.items():
        log.warning(
            "unit %s: the configuration's %s %s does not exist; using %s (a data directory"
            " restored from elsewhere: correct the configuration)",
            config.id,
            name,
            getattr(config, name),
            found,
        )
    return config.model_copy(update=moved) if moved else config


class TillService:
    """The till agent as a long-running service (see the module docstring)."""

    def __init__(self, config: AgentConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.api: ApiServer | None = None
        self.spool: SpoolIngestor | None = None
        self.watchdog = sdnotify.Watchdog()
        self._unpublished: str | None = None  # the API's URL while its address file is missing
        self._address_lock = threading.Lock()  # publishing it against removing it at stop
        # register -> why its sales are refused (the development unit under
        # development_unit = false, on another register than the configured one)
        self._refused_registers: dict[str, str] = {}

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        data_dir = self.config.data_dir
        _raise_open_files_limit()
        asyncio_log = logging.getLogger("asyncio")
        if ACCEPT_ERROR_FILTER not in asyncio_log.filters:
            asyncio_log.addFilter(ACCEPT_ERROR_FILTER)
        # up to READY, start-up may take minutes: quick_check and the migrations of a big
        # database on an SD card, opening a token or a chain service, storing what a killed
        # process left; systemd is asked for more time while it goes on
        with sdnotify.extending():
            # creates a missing data directory 0700 (it holds the AES keys), takes the lock
            self.db: TillDB = open_till_db(data_dir)
            forget_address(self.config)  # a killed service's: it names a port nobody uses
            self.registry = UnitRegistry(
                simulate_dir=data_dir / "simulate", open_timeout=self.config.sign_timeout_s
            )
            unit_ids = self._ensure_units(data_dir)
            self._open_units(unit_ids)
            self.receipts = ReceiptService(
                self.db,
                self.registry,
                clock=self.clock,
                sign_timeout=self.config.sign_timeout_s,
                thresholds=self.config.outage.thresholds(),
            )
            self.receipts.refused_registers.update(self._refused_registers)
        sdnotify.ready("database open and migrated")
        self.printer = PrintWorker(
            self.receipts,
            open_printer(self.config.printer),
            retry_s=self.config.printer.retry_s,
            escpos=self.config.printer.escpos,
            header=self.config.printer.header,
            on_progress=lambda: self.watchdog.beat("printer"),
            print_startbeleg=True,  # a register set up with `init`: its Startbeleg too
        )
        self.backups = self._backups()
        self.backend = _Backend(self)
        # everything a wrong configuration makes fail comes before the register: its
        # Startbeleg is signed and journaled, never taken back
        spool = self._spool()
        api = self._api_server() if self.config.api.enabled else None
        self.api = api  # bound, not served yet: stop() releases it if the start fails
        self._ensure_register(unit_ids)
        self._units_opened()
        self.prober = Prober(
            self.receipts, self.config.probe.backoff(), deadline=self.config.sign_timeout_s
        )
        self.checks = CheckWatch(self.db, self.clock)
        # the longest silence of each part: one printer job (connect, send, acknowledge:
        # 3 timeouts) and its record, which may wait for the writer while a receipt's
        # signing runs to its deadline; a timer's receipt may wait for another's signing
        job_s = 3 * self.config.printer.timeout_s + self.config.sign_timeout_s
        self.watchdog.register("printer", max(30.0, job_s + 15))
        self.watchdog.register("timers", self._silence_with_signing(30.0))
        if warning := self.config.printer.header_warning:  # once: receipts lack a name
            log.warning("%s", warning)
        if warning := self.config.hub.unbuilt_warning:  # once: nothing leaves the till
            log.warning("%s", warning)
        self.printer.start()
        self.prober.start()
        self._next_watch = self._next_closings = 0.0
        self.timers = BackgroundLoop("timer", self._timer_step)
        self.timers.start()
        if self.backups is not None:
            self.backup_loop = BackgroundLoop(
                "backup", self._backup_step, max_wait=BACKUPS_EVERY_S, error_wait=BACKUPS_EVERY_S
            )
            self.backup_loop.start()
        if spool is not None:
            self.watchdog.register(
                "spool", self._silence_with_signing(max(30.0, 3 * self.config.spool.rescan_s))
            )
            self.spool = SpoolIngestor(
                spool,
                self.backend.issue_sale,
                rescan_s=self.config.spool.rescan_s,
                on_progress=lambda: self.watchdog.beat("spool"),
            )
            self.spool.start()
        if api is not None:
            self.api = self._start_api(api)
        self.watchdog.start()
        sdnotify.status(self._status_line())
        log.info("till-agent running; data in %s", data_dir)

    def _silence_with_signing(self, seconds: float) -> float:
        """``seconds``, or longer when a receipt may take longer: it may wait for the
        writer while another receipt's signing runs to its deadline, then sign itself."""
        return max(seconds, 2 * self.config.sign_timeout_s + 15)

    def _ensure_units(self, data_dir: Path) -> list[str]:
        """Store the configured units; without any, the development unit on a first start
        (a data directory set up with ``unit create-software`` and ``init`` keeps its own)."""
        with self.db.write_connection().transaction() as conn:  # a restore's files in keys/
            store_moved_files(conn, self.clock.now().isoformat())
        configs = list(self.config.units)
        if not configs and self.config.wants_development_unit and self._only_development():
            configs = [self._development_unit(data_dir)]
        # a new or changed unit is opened to learn (or check) its key: before its write
        # transaction, and by a deadline (a token that hangs fails the start, named)
        timeout = max(self.config.sign_timeout_s, OPEN_TIMEOUT_S)
        configs = [_restored(config, data_dir) for config in configs]
        with self.db.read_connection() as conn:  # before any is stored: all or none
            for config in configs:
                refuse_other_zda(conn, config)
        for config in configs:
            with self.db.read_connection() as conn:
                row = conn.execute("SELECT config FROM units WHERE id = ?", (config.id,)).fetchone()
            if row is not None and UnitConfig.model_validate_json(row[0]) == stored_in(
                config, data_dir
            ):
                continue  # as store_unit stores it: files relative to the data directory
            unit = open_in_time(config, timeout)
            try:
                with self.db.write_connection().transaction() as conn:
                    store_unit(conn, config, unit, self.clock.now().isoformat())
            except ConfigurationError as exc:
                if row is None:
                    raise
                # another key under a stored unit's id: the till keeps selling with the
                # unit as stored (fallback receipts and an outage if it cannot be opened
                # any more), as when the key is swapped in place (rksv.md 5)
                log.error("%s; the unit keeps its stored configuration", exc)
            finally:
                unit.close()
        self._check_register_units()
        return [c.id for c in configs]

    def _open_units(self, configured: list[str]) -> None:
        """Start opening the units of the active registers and the configured ones, in the
        background: a token that hangs while it is opened holds up no sale, and the start
        for ``sign_timeout_s`` at most (see :class:`~agent.signing.registry.UnitRegistry`)."""
        with self.db.read_connection() as conn:
            rows = conn.execute("SELECT active_unit FROM registers WHERE state = 'active'")
            self.registry.open_in_background(conn, {*configured, *(r[0] for r in rows)})

    def _units_opened(self) -> None:
        """Wait for the units opened at start, each until its deadline (``OPEN_TIMEOUT_S``,
        or ``sign_timeout_s`` if longer, after its open started). The register of one that
        could not be opened gets its outage now, as a failed probe opens it (DESIGN.md
        invariant 4): the status shows the unit down from the start, its receipts are
        fallback ones at once, and the probe opens the unit when it can (its Sammelbeleg
        closes the outage)."""
        with self.db.read_connection() as conn:
            rows = conn.execute(
                "SELECT id FROM registers WHERE state = 'active' ORDER BY id"
            ).fetchall()
        for (register_id,) in rows:
            unit = self.receipts.unit_of(register_id)
            if isinstance(unit, UnopenedUnit):
                cause = f"unit {unit.identity.unit_id} cannot be opened: {unit.reason}"
                log.error(
                    "register %s: %s; its receipts are fallback-signed until the probe opens it",
                    register_id,
                    cause,
                )
                self.receipts.record_probe(register_id, False, cause)

    def _check_register_units(self) -> None:
        """Compare the registers' units with the configuration: a register that may still
        sign (not closed by its Schlussbeleg) and signs with the development unit now (its
        ``active_unit``: not one it switched away from) under ``development_unit = false``
        is refused: the configured register stops the start, another one is an ERROR and
        its sales are refused (409, rule ``development-unit``);
        the configured register, when it exists, on units the configured ones lack is an
        ERROR (it keeps its own: they are registered with FinanzOnline).

        Raises:
            ConfigurationError: the configured register signs with the development unit
                although the configuration says ``development_unit = false``.
        """
        register_id = self.config.register_.id
        with self.db.read_connection() as conn:
            units = register_unit_ids(conn, register_id)
            active = active_register_units(conn)
            signing = signing_units(conn)
        configured = [unit.id for unit in self.config.units]
        if not self.config.development_unit:
            # the unit it signs with now: one switched to a certified unit is not refused
            on_dev = [other for other, unit in signing.items() if unit == DEV_UNIT]
            if register_id in on_dev:
                raise ConfigurationError(development_register(register_id, DEV_UNIT, configured))
            # another register: the till goes on for the configured one (stopping it would
            # stop every sale); that one's sales are refused, its closings still issued
            for other in on_dev:
                why = development_register(other, DEV_UNIT, configured, named=register_id)
                log.error("%s; until then its sales are refused", why)
                self._refused_registers[other] = (
                    f"register {other} signs with the development unit {DEV_UNIT}, which is"
                    " not certified, and the configuration says development_unit = false:"
                    f" its sales are refused; send them to register {register_id}"
                )
        if units is None:
            return
        if (problem := other_units(register_id, units, configured, active)) is not None:
            log.error("%s", problem)

    def _only_development(self) -> bool:
        """True when the database knows no unit but the development unit (a first start,
        or one stopped before its register existed); registers need units, so no register
        either."""
        with self.db.read_connection() as conn:
            units = {str(row[0]) for row in conn.execute("SELECT id FROM units")}
        return units <= {DEV_UNIT}

    def _development_unit(self, data_dir: Path) -> UnitConfig:
        """The development unit's configuration, its key and certificate made on a first
        start. It signs as the fictitious provider AT100 (rksv.md 1.2), never as a real one;
        a unit stored by an earlier version as AT1 keeps its suite, which its receipts carry
        and the unit's identity pins (:func:`~agent.signing.registry.store_unit`)."""
        with self.db.read_connection() as conn:
            stored = conn.execute("SELECT zda FROM units WHERE id = ?", (DEV_UNIT,)).fetchone()
        keys = data_dir / "keys"
        key_file, cert_file = software_unit_files(keys, DEV_UNIT)
        if not (key_file.exists() and cert_file.exists()):
            self._create_development_unit(keys, key_file, cert_file)
            log.warning(
                "created the DEVELOPMENT signature unit %s: a self-signed key that is NOT"
                " certified; its receipts are not valid for a registered cash register",
                DEV_UNIT,
            )
        return UnitConfig(
            id=DEV_UNIT,
            kind="software",
            zda=DEV_ZDA if stored is None else str(stored[0]),
            key_file=key_file.resolve(),
            certificate_file=cert_file.resolve(),
            simulate=True,
        )

    def _create_development_unit(self, keys: Path, key_file: Path, cert_file: Path) -> None:
        """Write the development key and certificate so that a crash never leaves half a
        unit: both are made in a temporary directory, then the certificate and last the
        key are renamed into place (a key file means a complete unit)."""
        with self.db.write_connection().transaction() as conn:
            if conn.execute("SELECT 1 FROM units WHERE id = ?", (DEV_UNIT,)).fetchone():
                raise ConfigurationError(
                    f"{key_file} or {cert_file} is missing, but the till database knows"
                    f" unit {DEV_UNIT}: restore the files from a backup"
                )
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)  # private keys: owner only
        for stale in keys.glob(".new-unit-*"):  # a crash during an earlier attempt
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=".new-unit-", dir=keys) as tmp:
            made_key, made_cert = create_software_unit(Path(tmp), name=DEV_UNIT)
            assert made_cert is not None
            for made, target in ((made_cert, cert_file), (made_key, key_file)):
                os.replace(made, target)  # made durable by create_software_unit
        fsync_directory(keys)

    def _ensure_register(self, unit_ids: list[str]) -> None:
        reg = self.config.register_
        with self.db.write_connection().transaction() as conn:
            known = conn.execute("SELECT 1 FROM registers WHERE id = ?", (reg.id,)).fetchone()
        if known is not None or any(w["kind"] == "start" for w in self.receipts.waiting(reg.id)):
            return
        if not unit_ids and self.config.wants_development_unit:
            self._uninitialized(reg.id)  # the database has units of its own: the operator's
            return
        setup = RegisterSetup(
            reg.id,
            unit_ids,
            counter_bytes=reg.counter_bytes,
            timezone=reg.timezone,
            receipt_id_format=reg.receipt_id_format,
        )
        self.printer.print_from_start(reg.id)  # a crash right after the Startbeleg
        result = self.receipts.init_register_or_wait(setup)
        if result is None:
            log.warning("register %s: its Startbeleg waits for the signature unit", reg.id)
        else:
            log.info("register %s initialized (Startbeleg %s)", reg.id, result.receipt_id)
            self.printer.notify()

    def _uninitialized(self, register_id: str) -> None:
        """Warn that the configured register does not exist: name the registers the data
        directory holds (set up with ``init``, the configuration names another), else
        how to initialize it."""
        with self.db.read_connection() as conn:
            units = [str(row[0]) for row in conn.execute("SELECT id FROM units ORDER BY id")]
            others = [str(row[0]) for row in conn.execute("SELECT id FROM registers ORDER BY id")]
        if others:
            log.warning(
                "register %s ([register] id) is not initialized, but this data directory"
                " holds register %s: to sell on it, set [register] id = %s in the"
                " configuration; until then sales for %s are refused",
                register_id,
                ", ".join(others),
                " or ".join(f'"{other}"' for other in others),
                register_id,
            )
            return
        log.warning(
            "register %s is not initialized and no [[units]] are configured: initialize it"
            " with `till-agent init %s --unit ID` (units here: %s); until then its sales"
            " are refused",
            register_id,
            register_id,
            ", ".join(units),
        )

    def _backups(self) -> DepBackups | None:
        """The quarterly DEP backup job (§ 7 Abs 3 RKSV), warning when its directory is on
        the till's own disk; None when ``[backup] enabled = false``."""
        backup = self.config.backup
        if warning := backup.same_disk_warning(self.config.data_dir):
            log.warning("%s", warning)
        if not backup.enabled:
            log.warning("DEP backups are disabled ([backup] enabled = false)")
            return None
        assert backup.dir is not None
        return DepBackups(self.db, backup.dir, self.clock, data_dir=self.config.data_dir)

    def _spool(self) -> Spool | None:
        """The spool with its directories made (a wrong ``[spool] dir`` fails here); None
        when ``[spool] enabled = false``."""
        if not self.config.spool.enabled:
            return None
        assert self.config.spool.dir is not None
        return Spool(self.config.spool.dir)

    def _api_server(self) -> ApiServer:
        """The local API, not started yet: its token read (or made) and its address tried.

        Raises:
            ConfigurationError: the token file cannot be used, or the address cannot be
                listened on (a port another process holds, no socket directory).
        """
        api = self.config.api
        assert api.token_file is not None
        app = create_app(self.backend, token=ensure_api_token(api.token_file))
        if api.unix_socket is not None:
            server = serve(app, uds=api.unix_socket)
        else:
            server = serve(app, host=api.host, port=api.port)
        server.bind()  # before anything fiscal: a taken port fails the start cleanly
        return server

    def _start_api(self, server: ApiServer) -> ApiServer:
        api = self.config.api
        server.start()
        if server.uds is not None:
            log.info("local API on %s", server.location)
            return server
        try:  # for the commands that ask the service (agent.local_api), needed with port 0
            publish_address(self.config, server.url)
        except OSError as exc:  # the API works: only `port = 0` clients cannot find it
            log.error(
                "cannot name the API address in %s: %s; retried every second until it works",
                address_file(self.config),
                exc,
            )
            with self._address_lock:
                self._unpublished = server.url  # the timers try again (a full disk heals)
        picked = " (api.port = 0: the port the OS picked)" if api.port == 0 else ""
        log.info("local API on %s%s", server.url, picked)  # who reads it finds the file
        return server

    # -- timers (monotonic intervals: outage watch, check reminders, closings) -------------

    def _timer_step(self) -> float:
        """One pass of the timers (the loop logs a run of failures once, see BackgroundLoop)."""
        self.watchdog.beat("timers")  # alive even while a step fails
        self._publish_address()  # first: whatever else the full disk fails
        now = time.monotonic()
        if now >= self._next_watch:  # each of these may wait for a signing: a beat after each
            self.receipts.outages.watch.tick()
            self.watchdog.beat("timers")
            self.checks.tick()  # the operator's Belegcheck reminders, on the same interval
            self.watchdog.beat("timers")
            self._next_watch = now + self.config.outage.check_interval_s
        if now >= self._next_closings:
            if self.receipts.run_closings():
                self.printer.notify()
            self._next_closings = now + CLOSINGS_EVERY_S
        sdnotify.status(self._status_line())
        return 1.0

    def _publish_address(self) -> None:
        """Name the API's address now if that failed at the start (a full disk): the
        commands that ask the service find it once it could be written."""
        with self._address_lock:
            if self._unpublished is None:
                return
            try:
                publish_address(self.config, self._unpublished)
            except OSError as exc:
                log.debug("cannot name the API address yet: %s", exc)
                return
            log.info("API address named in %s at last", address_file(self.config))
            self._unpublished = None

    def _backup_step(self) -> float:
        """Write the due DEP backups, on a loop of their own: a long export never delays
        the outage watch or the watchdog. A failed backup is retried a minute later; it is
        logged as one ERROR line, and journaled once, when a register's run of failures
        starts (anything else that fails is the loop's to log)."""
        assert self.backups is not None
        failing = set(self.backups.failures)
        for failure in self.backups.attempt_due().failures:  # one line as a run starts
            if failure.register_id not in failing:
                log.error("%s (retried every %.0f s)", failure, BACKUPS_EVERY_S)
        return BACKUPS_EVERY_S

    def _status_line(self) -> str:
        open_ = self.receipts.outages.open_registers()
        line = f"outages open: {', '.join(open_) or 'none'}; printer: {self.printer.shown_state}"
        return line if self.api is None else f"{line}; API: {self.api.location}"

    # -- stop -----------------------------------------------------------------------------

    def run_until_signal(self) -> None:
        """Start, then run until SIGTERM or SIGINT; stop cleanly."""
        stop = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            stop.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop ingesting (finishing what is in flight), then everything else."""
        sdnotify.stopping()
        if self.spool is not None:
            self.spool.stop()
        if self.api is not None:
            self.api.stop()
        with self._address_lock:  # the timers name it no more
            self._unpublished = None
        if hasattr(self, "db"):  # the data directory is ours (its lock): so is the file
            try:
                forget_address(self.config)
            except OSError as exc:
                log.warning("cannot remove %s: %s", address_file(self.config), exc)
        backups: DepBackups | None = getattr(self, "backups", None)
        if backups is not None:
            backups.stop()  # a backup being written is abandoned, redone at next start
        for part in ("prober", "printer", "timers", "backup_loop"):
            if hasattr(self, part):
                getattr(self, part).stop()
        self.watchdog.stop()
        if hasattr(self, "registry"):
            self.registry.close()
        if hasattr(self, "db"):
            self.db.close()

"""The units a till knows: stored in the till database, opened once, shared by registers."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from agent.errors import ConfigurationError, NotFound, PinRejected, UnitUnavailable
from agent.signing import SignatureUnit, UnitConfig, open_unit
from agent.signing.base import Capabilities, Identity, call_with_deadline, in_daemon_thread
from agent.signing.config import moved_files, other_zda, placed_in, stored_in
from agent.signing.flaky import FlakyUnit
from storage.journal import append_event

__all__ = [
    "OPEN_TIMEOUT_S",
    "UnitRegistry",
    "UnopenedUnit",
    "active_register_units",
    "check_same_unit",
    "data_dir_of",
    "development_register",
    "open_in_time",
    "other_units",
    "refuse_other_zda",
    "register_unit_ids",
    "signing_units",
    "store_moved_files",
    "store_unit",
    "stored_config",
]

log = logging.getLogger(__name__)

# how long opening a unit may take where no signing deadline is configured (the CLI's
# commands): as long as a PKCS#11 unit's own calls while it is opened
OPEN_TIMEOUT_S = 10.0


def data_dir_of(conn: sqlite3.Connection) -> Path | None:
    """The data directory of the till database ``conn`` is open on (the one that holds
    its file); None for a database without a file."""
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return Path(row[2]).parent if row[2] else None
    return None  # pragma: no cover - SQLite always lists "main"


def stored_config(conn: sqlite3.Connection, unit_id: str) -> UnitConfig:
    """The stored configuration of unit ``unit_id``, its files placed in the data
    directory (:func:`~agent.signing.config.placed_in`).

    Raises:
        NotFound: no such unit is stored.
    """
    row = conn.execute("SELECT config FROM units WHERE id = ?", (unit_id,)).fetchone()
    if row is None:
        raise NotFound(f"no signature unit {unit_id!r} in this till database")
    config = UnitConfig.model_validate_json(row[0])
    if (data_dir := data_dir_of(conn)) is not None:  # its files relative to it
        config = placed_in(config, data_dir)
    return config


def register_unit_ids(conn: sqlite3.Connection, register_id: str) -> list[str] | None:
    """The units of register ``register_id`` in their order, also of one whose Startbeleg
    waits; None when the till database holds neither."""
    rows = conn.execute(
        "SELECT unit_id FROM register_units WHERE register_id = ? ORDER BY position",
        (register_id,),
    ).fetchall()
    if rows:
        return [str(row[0]) for row in rows]
    waiting = conn.execute(
        "SELECT json_extract(setup, '$.units') FROM waiting_specials WHERE register_id = ?"
        " AND kind = 'start' AND done_at IS NULL",
        (register_id,),
    ).fetchone()
    return None if waiting is None else [str(unit) for unit in json.loads(waiting[0])]


def active_register_units(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """The units of every register that may still sign, by register id: the active ones
    (not closed by a Schlussbeleg) and those whose Startbeleg waits."""
    rows = conn.execute(
        "SELECT id FROM registers WHERE state = 'active'"
        " UNION SELECT register_id FROM waiting_specials WHERE kind = 'start'"
        " AND done_at IS NULL AND register_id NOT IN (SELECT id FROM registers)"
        " ORDER BY 1"
    ).fetchall()
    return {str(row[0]): register_unit_ids(conn, str(row[0])) or [] for row in rows}


def signing_units(conn: sqlite3.Connection) -> dict[str, str]:
    """The unit each register that may still sign signs with now, by register id: an
    active register's ``active_unit`` (``unit switch`` moves it), the first unit of one
    whose Startbeleg waits (the one its Startbeleg is signed with)."""
    active = dict(conn.execute("SELECT id, active_unit FROM registers WHERE state = 'active'"))
    return {
        str(register_id): str(active.get(register_id, units[0]))
        for register_id, units in active_register_units(conn).items()
        if register_id in active or units
    }


def other_units(
    register_id: str,
    units: Sequence[str],
    configured: Sequence[str],
    others: Mapping[str, Sequence[str]] | None = None,
) -> str | None:
    """Why the configured ``[[units]]`` do not hold the ``units`` of the existing register
    ``register_id``; None when they do (more units are fine: those of the till's other
    registers, ``others`` by register id, or one a new register is to be set up on), or
    when no units are configured (a register set up with ``init`` keeps its own). The
    configuration never changes a register's units: only ``till-agent unit switch`` does
    (:mod:`agent.unit_switch`), and the units it switched away from stay its units."""
    missing = [unit for unit in units if unit not in configured]
    if not configured or not missing:
        return None
    users: dict[str, list[str]] = {}
    for other, their_units in sorted((others or {}).items()):
        if other != register_id:
            for unit in their_units:
                users.setdefault(unit, []).append(other)
    advice = []
    for unit in configured:
        if unit in units:
            continue
        if unit in users:
            names = f"register{'s' * (len(users[unit]) > 1)} {', '.join(users[unit])}"
            advice.append(f"{unit} signs for {names} already: its sales go there")
        else:
            advice.append(
                f"to sell with {unit}, set up a new register on it (`till-agent init NEW-ID"
                f" --unit {unit}`) and register it in FinanzOnline"
            )
    return (
        f"register {register_id} exists with unit{'s' * (len(units) > 1)} {', '.join(units)},"
        f" but the configured [[units]] ({', '.join(configured)}) lack {', '.join(missing)}:"
        " a register's units are part of its registration with FinanzOnline and change only"
        f" by `till-agent unit switch`, so it goes on signing with {', '.join(units)} as the"
        f" till database stores {'them' if len(units) > 1 else 'it'}. To go on with register"
        f" {register_id}, add"
        f" {', '.join(missing)} to [[units]] (they may list the units of every register of"
        " the till), or configure none" + "".join(f"; {line}" for line in advice)
    )


def development_register(
    register_id: str, dev_unit: str, configured: Sequence[str], *, named: str | None = None
) -> str:
    """Why ``run`` refuses register ``register_id`` on the development unit ``dev_unit``
    under ``development_unit = false``, and what to do (``configured``: the ids of the
    configured ``[[units]]``; ``named``: the configured ``[register] id``, when another
    register than that one signs with the development unit)."""
    closing = (
        f"close register {register_id} with its Schlussbeleg (with the service stopped:"
        f" `till-agent special {register_id} closing --yes`)"
    )
    if named is not None and named != register_id:
        return (
            f"register {register_id} signs with the development unit {dev_unit} (a"
            " self-signed key, not certified: its receipts are not valid for a registered"
            " cash register) and is not decommissioned, but the configuration says"
            " development_unit = false: a POS that sends it a sale would get a receipt"
            f" signed with that key. {closing[0].upper()}{closing[1:]} and send its sales to"
            f" a register on a production unit (such as {named}); or set development_unit"
            f" = true to go on developing with register {register_id}"
        )
    if configured:
        new = (
            f"on the production unit with `till-agent init NEW-ID --unit {configured[0]}` (or"
            " set [register] id to a new id: `till-agent run` initializes it on the"
            " configured [[units]]), register it in FinanzOnline and set [register] id to it"
        )
    else:
        new = (
            "on a production unit: add it ([[units]], or `till-agent unit add-pkcs11`), run"
            " `till-agent init NEW-ID --unit ID`, register it in FinanzOnline and set"
            " [register] id to it"
        )
    unit = configured[0] if configured else "ID"
    return (
        f"register {register_id} signs with the development unit {dev_unit} (a self-signed"
        " key, not certified: its receipts are not valid for a registered cash register),"
        " but the configuration says development_unit = false. A register's unit is part"
        f" of its registration with FinanzOnline: set up a new register {new}, then"
        f" {closing}; or move register {register_id} itself to the production unit (with the"
        f" service stopped: `till-agent unit switch {register_id} {unit}`) and register it"
        " and the unit in FinanzOnline; or set development_unit = true to go on developing"
        f" with register {register_id}"
    )


def store_unit(conn: sqlite3.Connection, config: UnitConfig, unit: SignatureUnit, at: str) -> None:
    """Record a unit's configuration and identity in the open transaction.

    A stored unit's identity is pinned: its receipts carry its serial and the DEP's
    crypto container holds its key (rksv.md 7), so another key under the same id would
    make every receipt signed with it fail verification, and overwriting the stored
    certificate would lose the key of the receipts signed before. Only the configuration
    (a moved key file, a new PIN) may change. Files inside the data directory are stored
    relative to it (:func:`~agent.signing.config.stored_in`).

    Raises:
        ConfigurationError: ``unit`` is not the unit stored under ``config.id``.
    """
    ident = unit.identity
    if (data_dir := data_dir_of(conn)) is not None:
        config = stored_in(config, data_dir)
    stored = conn.execute(
        "SELECT zda, serial, public_key_der, certificate_der FROM units WHERE id = ?",
        (config.id,),
    ).fetchone()
    if stored is not None:
        check_same_unit(config.id, _identity_of(config.id, stored), ident)
        conn.execute(
            "UPDATE units SET kind = ?, config = ? WHERE id = ?",
            (config.kind, config.model_dump_json(), config.id),
        )
    else:
        conn.execute(
            "INSERT INTO units (id, kind, config, zda, serial, public_key_der,"
            " certificate_der, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                config.id,
                config.kind,
                config.model_dump_json(),
                ident.zda,
                ident.serial,
                ident.public_key_der,
                ident.certificate_der,
                at,
            ),
        )
    append_event(
        conn,
        kind="unit.stored",
        register_id=None,
        at=at,
        data={"unit": config.id, "kind": config.kind, "zda": ident.zda, "serial": ident.serial},
    )


def refuse_other_zda(conn: sqlite3.Connection, config: UnitConfig) -> None:
    """Refuse ``config`` when the till database stores its unit under another provider.

    The provider is part of the stored identity (:func:`store_unit`), which its receipts
    and the checks' test of a development unit (provider AT100) read: a configuration that
    names another one is an error at start, never a change of the stored unit (that would
    rewrite what its receipts so far were), nor ignored with only a log line.

    Raises:
        ConfigurationError: naming ``units.<id>.zda``, both providers and the ways on.
    """
    row = conn.execute("SELECT zda FROM units WHERE id = ?", (config.id,)).fetchone()
    if row is not None and str(row[0]) != config.zda:
        raise ConfigurationError(other_zda(config, str(row[0])))


def store_moved_files(conn: sqlite3.Connection, at: str) -> list[str]:
    """In the open write transaction: a stored unit file named by an absolute path that is
    gone and found in ``<data_dir>/keys/`` (:func:`~agent.signing.config.moved_files`: a
    data directory restored elsewhere from a database that named its files so) is stored
    where it was found, relative to the data directory as :func:`store_unit` stores it,
    and journaled as ``store_unit`` journals a change; the ids of the units changed.

    Without it every process that opens the unit looks for it again, with a WARNING.
    """
    data_dir = data_dir_of(conn)
    if data_dir is None:
        return []
    changed = []
    rows = conn.execute("SELECT id, kind, config, zda, serial FROM units ORDER BY id")
    for unit_id, kind, was, zda, serial in rows.fetchall():
        config = UnitConfig.model_validate_json(was)
        if not (moved := moved_files(config, data_dir)):
            continue
        # found in <data_dir>/keys/: relative to the data directory, as stored_in stores it
        relative = {name: found.relative_to(data_dir) for name, found in moved.items()}
        text = config.model_copy(update=relative).model_dump_json()
        conn.execute("UPDATE units SET config = ? WHERE id = ?", (text, unit_id))
        data = {"unit": unit_id, "kind": kind, "zda": zda, "serial": serial, "moved": sorted(moved)}
        append_event(conn, kind="unit.stored", register_id=None, at=at, data=data)
        for name in sorted(moved):
            log.warning(
                "unit %s: %s %s does not exist; %s is used and stored from now on (a data"
                " directory restored from elsewhere)",
                unit_id,
                name,
                getattr(config, name),
                moved[name],
            )
        changed.append(unit_id)
    return changed


def open_in_time(config: UnitConfig, timeout: float) -> SignatureUnit:
    """Open the unit of ``config`` on a daemon thread, waiting for it ``timeout`` seconds
    at most; one that opens later is closed then.

    Raises:
        ConfigurationError: it cannot be opened, or not in time.
    """
    attempt = in_daemon_thread(functools.partial(open_unit, config))
    try:
        return attempt.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        attempt.add_done_callback(_close_late)
        raise ConfigurationError(
            f"unit {config.id}: opening it has not answered within {timeout:g} s (the token"
            " or service hangs)"
        ) from None


def _close_late(attempt: concurrent.futures.Future[SignatureUnit]) -> None:
    if attempt.exception() is None:
        attempt.result().close()


def check_same_unit(unit_id: str, stored: Identity, opened: Identity) -> None:
    """Refuse ``opened`` when it is not the unit stored as ``unit_id``: another suite,
    serial, key or certificate.

    Raises:
        ConfigurationError: naming what differs and what to do instead.
    """
    differs = [
        name
        for name, was, now in (
            ("suite", stored.zda, opened.zda),
            ("serial", stored.serial, opened.serial),
            ("public key", stored.public_key_der, opened.public_key_der),
            ("certificate", stored.certificate_der, opened.certificate_der),
        )
        if was != now
    ]
    if differs:
        raise ConfigurationError(
            f"unit {unit_id} opened with another {' and '.join(differs)} than the one its"
            f" receipts carry (stored: {stored.suite} serial {stored.serial}; opened:"
            f" {opened.suite} serial {opened.serial}). A unit's key never changes under its id:"
            " add the new key as a unit with an id of its own, register it in FinanzOnline"
            " and put the original key back (or let the register's outage run its course)"
        )


def _identity_of(unit_id: str, row: sqlite3.Row | tuple[object, ...]) -> Identity:
    zda, serial, public_key, certificate = row
    return Identity(
        unit_id,
        str(zda),
        str(serial),
        bytes(public_key),  # type: ignore[arg-type]
        None if certificate is None else bytes(certificate),  # type: ignore[arg-type]
    )


class UnitRegistry:
    """Opens units from their stored configuration and keeps them open.

    Opening never blocks anyone past a deadline (``open_timeout``, the service's
    ``sign_timeout_s``): a token may hang in ``C_Login`` and a chain service may not
    answer. A unit is opened on a daemon thread of its own (a hung C call cannot be
    interrupted) while an :class:`UnopenedUnit` stands in for it; whoever needs the unit
    first waits for that open until its deadline, then gets the stand-in, which signs
    nothing: the receipt is a fallback one and the outage opens. The probe opens it
    again in the background (one open at a time), and an open that succeeds, however
    late, puts the unit in its place.

    Tests and the scenario simulator can :meth:`put` a unit object directly (for example a
    flaky wrapper) in place of the configured one.
    """

    def __init__(
        self, simulate_dir: Path | None = None, *, open_timeout: float = OPEN_TIMEOUT_S
    ) -> None:
        self._units: dict[str, SignatureUnit] = {}
        self._lock = threading.Lock()
        self.simulate_dir = simulate_dir
        self.open_timeout = open_timeout

    def put(self, unit: SignatureUnit) -> None:
        with self._lock:
            self._units[unit.identity.unit_id] = unit

    def get(self, conn: sqlite3.Connection, unit_id: str) -> SignatureUnit:
        """The open unit ``unit_id``, else the :class:`UnopenedUnit` standing in for it.

        A unit not asked for before starts opening now; the caller waits for a unit's
        first open until its deadline (``open_timeout`` after it started), never longer,
        and never for the probe's later attempts.

        Raises:
            NotFound: no such unit is stored.
        """
        with self._lock:
            unit = self._units.get(unit_id)
        if unit is None:
            unit = self._stand_in(conn, unit_id)
        if not isinstance(unit, UnopenedUnit):
            return unit
        unit.wait_first()
        with self._lock:
            return self._units.get(unit_id, unit)

    def open_in_background(self, conn: sqlite3.Connection, unit_ids: Iterable[str]) -> None:
        """Start opening the units ``unit_ids`` (those not open or opening yet), so that
        nobody waits for them later (the service's start). Their first open may take
        ``OPEN_TIMEOUT_S`` (or ``open_timeout`` if longer): a card's login and test signature
        can outlast the signing deadline, and the start waits for them before any sale.

        Raises:
            NotFound: one of them is not stored.
        """
        for unit_id in unit_ids:
            with self._lock:
                known = unit_id in self._units
            if not known:
                self._stand_in(conn, unit_id, max(OPEN_TIMEOUT_S, self.open_timeout))

    def _stand_in(
        self, conn: sqlite3.Connection, unit_id: str, first_timeout: float | None = None
    ) -> SignatureUnit:
        """The :class:`UnopenedUnit` for ``unit_id``, its first open started (or what is
        in its place by now); who needs it waits for that open ``first_timeout`` s at
        most (``open_timeout`` unless given)."""
        config = stored_config(conn, unit_id)
        stored = self._stored_identity(conn, unit_id)
        with self._lock:  # the stand-in and its first open at once: get() waits for it
            unit = self._units.get(unit_id)
            if unit is None:
                unit = UnopenedUnit(config, stored, "it has not been opened yet", self)
                unit.start_first(self.open_timeout if first_timeout is None else first_timeout)
                self._units[unit_id] = unit
            return unit

    def _open_as(self, config: UnitConfig, stored: Identity) -> SignatureUnit:
        """Open the unit of ``config`` and check that it is the one stored (``stored``).

        Raises:
            ConfigurationError: it cannot be opened, or it is another unit.
        """
        unit = self._open(config)
        try:
            check_same_unit(config.id, stored, unit.identity)
        except ConfigurationError:
            unit.close()
            raise
        return unit

    def _open(self, config: UnitConfig) -> SignatureUnit:
        unit = open_unit(config)
        if config.simulate and self.simulate_dir is not None:
            return FlakyUnit(unit, mode_file=self.simulate_dir / f"{config.id}.mode")
        return unit

    @staticmethod
    def _stored_identity(conn: sqlite3.Connection, unit_id: str) -> Identity:
        row = conn.execute(
            "SELECT zda, serial, public_key_der, certificate_der FROM units WHERE id = ?",
            (unit_id,),
        ).fetchone()
        return _identity_of(unit_id, row)

    def open_in_place(self, unopened: UnopenedUnit) -> SignatureUnit:
        """Open the unit ``unopened`` stands for and put it in its place (on the thread
        of an :meth:`UnopenedUnit.attempt`, for as long as the unit takes).

        Raises:
            ConfigurationError: it cannot be opened, or the registry was closed meanwhile.
        """
        unit_id = unopened.identity.unit_id
        unit = self._open_as(unopened.config, unopened.identity)
        with self._lock:
            current = self._units.get(unit_id)  # None: the registry was closed meanwhile
            if current is unopened:
                self._units[unit_id] = current = unit
        if current is not unit:  # the service stopped, or a unit was put in its place
            unit.close()
        if current is None:
            raise ConfigurationError(f"unit {unit_id}: opened after the service stopped")
        if unopened.given_up():  # its receipts were fallback ones: say when that ends
            log.info("unit %s is open now", unit_id)
        return current

    def opened(self, unopened: UnopenedUnit, deadline: float) -> SignatureUnit:
        """The unit ``unopened`` stands for, opened by ``deadline`` (monotonic seconds): the
        one in its place by now, else the open under way or a new one, waited for until
        ``deadline``; a hung open goes on in the background.

        Raises:
            UnitUnavailable: it cannot be opened, or not by ``deadline``.
        """
        unit_id = unopened.identity.unit_id
        with self._lock:
            current = self._units.get(unit_id)
        if current is not None and not isinstance(current, UnopenedUnit):
            return current
        attempt = unopened.attempt()
        concurrent.futures.wait([attempt], timeout=max(0.0, deadline - time.monotonic()))
        if not attempt.done():
            raise UnitUnavailable(f"unit {unit_id} cannot be opened: {unopened.reason}")
        try:
            return attempt.result()
        except Exception as exc:
            raise UnitUnavailable(f"unit {unit_id} cannot be opened: {exc}") from exc

    def close(self) -> None:
        """Close every open unit. A close that hangs (its token stuck in a call) is given
        up after ``open_timeout``: the process it belongs to must be able to stop."""
        with self._lock:
            units, self._units = list(self._units.values()), {}
        for unit in units:
            what = f"closing unit {unit.identity.unit_id}"
            try:
                call_with_deadline(unit.close, time.monotonic() + self.open_timeout, what)
            except UnitUnavailable as exc:
                log.warning("%s; left to the end of the process", exc)


class UnopenedUnit:
    """A stored unit that is not open (yet): it signs nothing and its probe opens it.

    Its identity is the one stored when it was added, so fallback receipts carry the serial
    of the unit they would have been signed with. It opens its unit on a daemon thread,
    one attempt at a time (:meth:`attempt`): a token hung in ``C_Login`` holds up one
    thread, not one more with every probe.
    """

    def __init__(
        self, config: UnitConfig, identity: Identity, reason: str, registry: UnitRegistry
    ) -> None:
        self.config = config
        self._reason = reason
        self._identity = identity
        self._registry = registry
        self._capabilities = Capabilities(remote=config.kind == "chain")
        self._lock = threading.Lock()
        self._attempt: concurrent.futures.Future[SignatureUnit] | None = None
        self._started = 0.0  # when the attempt under way started (monotonic)
        self._first: concurrent.futures.Future[SignatureUnit] | None = None
        self._first_deadline = 0.0
        self._failed = False
        self._logged: str | None = None  # the last reason an open logged

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def reason(self) -> str:
        """Why it is not open: the last attempt's error, or how long the open under way
        has gone unanswered."""
        with self._lock:
            attempt, started = self._attempt, self._started
        if attempt is not None and not attempt.done():
            waited = time.monotonic() - started
            return f"opening it has not answered for {waited:.1f} s (the token or service hangs)"
        return self._reason

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        """Nothing was sent anywhere: the receipt is a fallback one (never ``unsigned``)."""
        raise UnitUnavailable(f"unit {self.config.id} cannot be opened: {self.reason}")

    def probe(self, *, deadline: float) -> None:
        """Open the unit (or wait for the open under way) and probe it, by ``deadline``."""
        self._registry.opened(self, deadline).probe(deadline=deadline)

    def close(self) -> None:
        """Nothing is open (an open under way closes what it opens: the registry is closed)."""

    def attempt(self) -> concurrent.futures.Future[SignatureUnit]:
        """The open under way, or a new one on a daemon thread."""
        with self._lock:
            if self._attempt is None or self._attempt.done():
                self._started = time.monotonic()
                self._attempt = in_daemon_thread(self._open)
            return self._attempt

    def start_first(self, timeout: float) -> None:
        """Start the first open; who needs the unit waits for it for ``timeout`` s at most."""
        with self._lock:  # set before the open starts: its failure reads it
            self._first_deadline = time.monotonic() + timeout
        first = self.attempt()
        with self._lock:
            self._first = first

    def wait_first(self) -> None:
        """Wait for the first open, until its deadline (not at all after it)."""
        with self._lock:
            first, deadline = self._first, self._first_deadline
        if first is not None:
            concurrent.futures.wait([first], timeout=max(0.0, deadline - time.monotonic()))

    def given_up(self) -> bool:
        """True once its first open failed or missed its deadline (nobody waits for it)."""
        with self._lock:
            return self._failed or time.monotonic() > self._first_deadline

    def _open(self) -> SignatureUnit:
        try:
            return self._registry.open_in_place(self)
        except Exception as exc:
            with self._lock:
                self._reason = str(exc) or type(exc).__name__
                self._failed = True
                logged, self._logged = self._logged, self._reason
                late = time.monotonic() > self._first_deadline  # nobody waits to say why
            # once per change, not for a first open that failed in time (whoever waited for
            # it says why: the service's start); a PIN rejected at ERROR, as the unit never
            # tries it again
            if (logged is not None or late) and self._reason != logged:
                rejected = isinstance(exc, PinRejected)
                log.log(
                    logging.ERROR if rejected else logging.WARNING,
                    "unit %s cannot be opened: %s%s",
                    self.config.id,
                    exc,
                    "" if rejected else " (the probe goes on; logged again when it changes)",
                )
            raise

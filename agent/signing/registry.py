"""The units a till knows: stored in the till database, opened once, shared by registers."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from agent.errors import ConfigurationError, NotFound, PinRejected, UnitUnavailable
from agent.signing import SignatureUnit, UnitConfig, open_unit
from agent.signing.base import Capabilities, Identity
from agent.signing.config import moved_files, placed_in, stored_in
from agent.signing.flaky import FlakyUnit
from storage.journal import append_event

__all__ = [
    "UnitRegistry",
    "UnopenedUnit",
    "check_same_unit",
    "data_dir_of",
    "development_register",
    "other_units",
    "register_unit_ids",
    "store_moved_files",
    "store_unit",
    "stored_config",
]

log = logging.getLogger(__name__)


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


def other_units(register_id: str, units: Sequence[str], configured: Sequence[str]) -> str | None:
    """Why the configured ``[[units]]`` are not the ``units`` of the existing register
    ``register_id``; None when they are, or when no units are configured (a register set
    up with ``init`` keeps its own)."""
    if not configured or set(units) == set(configured):
        return None
    return (
        f"register {register_id} exists with unit{'s' * (len(units) > 1)} {', '.join(units)},"
        " but the configuration"
        f" names [[units]] {', '.join(configured)}: a register's units are part of its"
        " registration with FinanzOnline and never change, so it goes on signing with"
        f" {units[0]}. To sell with {configured[0]}, set up a new register on it: set"
        f" [register] id to a new id (`till-agent run` initializes it) or run"
        f" `till-agent init NEW-ID --unit {configured[0]}`, and register it in FinanzOnline;"
        f" to go on with register {register_id}, configure its units in [[units]], or none"
    )


def development_register(register_id: str, dev_unit: str, configured: Sequence[str]) -> str:
    """Why ``run`` refuses register ``register_id`` on the development unit ``dev_unit``
    under ``development_unit = false``, and what to do (``configured``: the ids of the
    configured ``[[units]]``)."""
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
    return (
        f"register {register_id} signs with the development unit {dev_unit} (a self-signed"
        " key, not certified: its receipts are not valid for a registered cash register),"
        " but the configuration says development_unit = false. A register's unit is part"
        f" of its registration with FinanzOnline and never changes: set up a new register {new};"
        f" or set development_unit = true to go on developing with register {register_id}"
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
    """Opens units from their stored configuration on first use and keeps them open.

    Tests and the scenario simulator can :meth:`put` a unit object directly (for example a
    flaky wrapper) in place of the configured one.
    """

    def __init__(self, simulate_dir: Path | None = None) -> None:
        self._units: dict[str, SignatureUnit] = {}
        self._lock = threading.Lock()
        self.simulate_dir = simulate_dir

    def put(self, unit: SignatureUnit) -> None:
        with self._lock:
            self._units[unit.identity.unit_id] = unit

    def get(self, conn: sqlite3.Connection, unit_id: str) -> SignatureUnit:
        """The open unit ``unit_id``, opened from the database if needed.

        Raises:
            NotFound: no such unit is stored.
            ConfigurationError: the unit cannot be opened.
        """
        with self._lock:
            unit = self._units.get(unit_id)
        if unit is not None:
            return unit
        config = stored_config(conn, unit_id)
        stored = self._stored_identity(conn, unit_id)
        try:
            unit = self._open_as(config, stored)
        except ConfigurationError as exc:
            # a unit that signed before and cannot be opened now (the token is out, the
            # chain service unreachable at start, another key in its place) is a failing
            # unit, not a broken till: receipts take the fallback path with its stored
            # identity, the outage opens, and the probe opens it when it is back
            # (rksv.md 5: keep selling)
            unit = UnopenedUnit(config, stored, str(exc), self)
        self.put(unit)
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

    def reopen(self, unopened: UnopenedUnit) -> SignatureUnit:
        """Open the unit ``unopened`` stands for and keep it in its place.

        Raises:
            ConfigurationError: it still cannot be opened.
        """
        unit = self._open_as(unopened.config, unopened.identity)
        with self._lock:
            if self._units.get(unopened.identity.unit_id) is unopened:
                self._units[unopened.identity.unit_id] = unit
        return unit

    def close(self) -> None:
        with self._lock:
            units, self._units = list(self._units.values()), {}
        for unit in units:
            unit.close()


class UnopenedUnit:
    """A stored unit that could not be opened: it signs nothing and its probe opens it.

    Its identity is the one stored when it was added, so fallback receipts carry the serial
    of the unit they would have been signed with.
    """

    def __init__(
        self, config: UnitConfig, identity: Identity, reason: str, registry: UnitRegistry
    ) -> None:
        self.config = config
        self.reason = reason
        self._identity = identity
        self._registry = registry
        self._capabilities = Capabilities(remote=config.kind == "chain")
        self._logged: str | None = None  # the last reason a probe logged

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        """Nothing was sent anywhere: the receipt is a fallback one (never ``unsigned``)."""
        raise UnitUnavailable(f"unit {self.config.id} cannot be opened: {self.reason}")

    def probe(self, *, deadline: float) -> None:
        """Open the unit; its reason is logged when it changes (a PIN the token rejected at
        ERROR: the unit does not try it again, see :class:`PinRejected`)."""
        try:
            unit = self._registry.reopen(self)
        except ConfigurationError as exc:
            self.reason = str(exc)
            if self.reason != self._logged:
                self._logged = self.reason
                rejected = isinstance(exc, PinRejected)
                log.log(
                    logging.ERROR if rejected else logging.WARNING,
                    "unit %s cannot be opened: %s%s",
                    self.config.id,
                    exc,
                    "" if rejected else " (the probe goes on; logged again when it changes)",
                )
            raise UnitUnavailable(f"unit {self.config.id} cannot be opened: {exc}") from exc
        unit.probe(deadline=deadline)

    def close(self) -> None:
        """Nothing is open."""

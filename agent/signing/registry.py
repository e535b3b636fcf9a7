"""The units a till knows: stored in the till database, opened once, shared by registers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from agent.errors import ConfigurationError, NotFound, UnitUnavailable
from agent.signing import SignatureUnit, UnitConfig, open_unit
from agent.signing.base import Capabilities, Identity
from agent.signing.flaky import FlakyUnit
from storage.journal import append_event

__all__ = ["UnitRegistry", "UnopenedUnit", "store_unit"]


def store_unit(conn: sqlite3.Connection, config: UnitConfig, unit: SignatureUnit, at: str) -> None:
    """Record (or refresh) a unit's configuration and identity in the open transaction."""
    ident = unit.identity
    conn.execute(
        "INSERT OR REPLACE INTO units (id, kind, config, zda, serial, public_key_der,"
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
        row = conn.execute("SELECT config FROM units WHERE id = ?", (unit_id,)).fetchone()
        if row is None:
            raise NotFound(f"no signature unit {unit_id!r} in this till database")
        config = UnitConfig.model_validate_json(row[0])
        try:
            unit = self._open(config)
        except ConfigurationError as exc:
            # a unit that signed before and cannot be opened now (the token is out, the
            # chain service unreachable at start) is a failing unit, not a broken till:
            # receipts take the fallback path with its stored identity, the outage opens,
            # and the probe opens it when it is back (rksv.md 5: keep selling)
            unit = UnopenedUnit(config, self._stored_identity(conn, unit_id), str(exc), self)
        self.put(unit)
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
        return Identity(unit_id, str(row[0]), str(row[1]), bytes(row[2]), row[3] and bytes(row[3]))

    def reopen(self, unopened: UnopenedUnit) -> SignatureUnit:
        """Open the unit ``unopened`` stands for and keep it in its place.

        Raises:
            ConfigurationError: it still cannot be opened.
        """
        unit = self._open(unopened.config)
        if unit.identity.serial != unopened.identity.serial:
            unit.close()
            raise ConfigurationError(
                f"unit {unopened.config.id} opened with serial {unit.identity.serial}, but its"
                f" receipts carry {unopened.identity.serial}: register the new unit instead"
            )
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
        try:
            unit = self._registry.reopen(self)
        except ConfigurationError as exc:
            self.reason = str(exc)
            raise UnitUnavailable(f"unit {self.config.id} cannot be opened: {exc}") from exc
        unit.probe(deadline=deadline)

    def close(self) -> None:
        """Nothing is open."""

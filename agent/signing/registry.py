"""The units a till knows: stored in the till database, opened once, shared by registers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from agent.errors import NotFound
from agent.signing import SignatureUnit, UnitConfig, open_unit
from agent.signing.flaky import FlakyUnit
from storage.journal import append_event

__all__ = ["UnitRegistry", "store_unit"]


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
        unit = open_unit(config)
        if config.simulate and self.simulate_dir is not None:
            unit = FlakyUnit(unit, mode_file=self.simulate_dir / f"{config.id}.mode")
        self.put(unit)
        return unit

    def close(self) -> None:
        with self._lock:
            units, self._units = list(self._units.values()), {}
        for unit in units:
            unit.close()

"""Registers: the setup of a new one, its creation, and looking one up to issue on it."""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.at_rksv import AUSTRIAN_ZONES, REGISTER_ID_RULE, is_register_id
from agent.at_rksv.counter import (
    ISSUED_COUNTER_BYTES_MAX,
    ISSUED_COUNTER_BYTES_RULE,
    MIN_COUNTER_BYTES,
)
from agent.errors import InvalidSale, RegisterClosed, WaitsForUnit
from agent.waiting import open_waiting
from storage.journal import append_event, canonical_json

__all__ = [
    "CLOSING_SENT",
    "FAILED_OK_HINT",
    "RECEIPT_ID_FORMAT_RULE",
    "START_SENT",
    "RegisterSetup",
    "check_new_register",
    "check_receipt_id_format",
    "check_setup",
    "check_unit_serials",
    "create_register",
    "open_register",
    "refuse_pending_start",
    "register_row",
    "setup_from_json",
    "setup_json",
    "start_unit",
]

CLOSING_SENT = (
    "register {register}: its Schlussbeleg was sent to the chain service, but no answer came;"
    " the register sells nothing more, and the Schlussbeleg is sent again unchanged as soon"
    " as the service answers (till-agent outage recover)"
)

# how a register whose unit is down for good is decommissioned all the same
FAILED_OK_HINT = (
    "a unit down for good: till-agent special {register} closing --yes --failed-ok issues"
    " the Schlussbeleg with the failure marker (rksv.md 5: a Schlussbeleg may carry it)"
    " and decommissions the register"
)

START_SENT = (
    "register {register}: its Startbeleg was sent to the chain service, but no answer came;"
    " it waits and is sent again unchanged as soon as the service answers (till-agent"
    " outage recover)"
)

# the widest {number:0Nd}, and the longest literal text: any number up to 20 digits (2**64)
# still gives an id of at most 64 characters (check_id, receipts.receipt_id)
_MAX_WIDTH = 20
_MAX_LITERAL = 64 - _MAX_WIDTH
RECEIPT_ID_FORMAT_RULE = (
    "a receipt id format is literal text (printable, without '_', '{' or '}', at most"
    f" {_MAX_LITERAL} characters) around exactly one {{number}}, {{number:0Nd}} (zero-padded)"
    f" or {{number:Nd}} (space-padded), N from 1 to {_MAX_WIDTH}; e.g. 'B{{number:06d}}'"
)
_RECEIPT_ID_FORMAT = re.compile(
    r"(?P<prefix>[^{}_]*)\{number(?::0?(?P<width>[1-9][0-9]?)d)?\}(?P<suffix>[^{}_]*)"
)


@dataclass(frozen=True, slots=True)
class RegisterSetup:
    """What ``init`` needs to know about a new register."""

    register_id: str
    unit_ids: Sequence[str]
    counter_bytes: int = 8
    aes_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    timezone: str = "Europe/Vienna"
    receipt_id_format: str = "{number}"


def check_new_register(conn: sqlite3.Connection, setup: RegisterSetup) -> bool:
    """Refuse an existing register or unusable units; whether it is a closed system."""
    if conn.execute("SELECT 1 FROM registers WHERE id = ?", (setup.register_id,)).fetchone():
        raise InvalidSale(
            "register",
            "register-exists",
            f"register {setup.register_id} is already initialized",
        )
    zdas = _unit_zdas(conn, setup.unit_ids)
    closed = zdas[0] == "AT0"
    if any((z == "AT0") != closed for z in zdas):
        raise InvalidSale("units", "one-system", "do not mix closed (AT0) and open units")
    check_unit_serials(conn, setup.unit_ids)
    return closed


def check_unit_serials(conn: sqlite3.Connection, unit_ids: Sequence[str]) -> None:
    """Refuse two units with one serial (certificate serial or key id) and different keys:
    a receipt names its unit by it (field 11), and the crypto container keys by it."""
    seen: dict[str, tuple[str, bytes]] = {}
    for unit_id in unit_ids:
        serial, key = conn.execute(
            "SELECT serial, public_key_der FROM units WHERE id = ?", (unit_id,)
        ).fetchone()
        first = seen.setdefault(str(serial), (unit_id, bytes(key)))
        if first[1] != bytes(key):
            raise InvalidSale(
                "units",
                "serial-unique",
                f"units {first[0]} and {unit_id} have the same serial or key id {serial!r}"
                " but different keys: receipts and the crypto container tell units apart by"
                " it (give each closed-system key its own key id)",
            )


def create_register(
    conn: sqlite3.Connection, setup: RegisterSetup, now: str, closed: bool | None = None
) -> None:
    """Insert the register, created at ``now`` (``closed``: what :func:`check_new_register`
    found, when the caller checked already)."""
    if closed is None:
        closed = check_new_register(conn, setup)
    conn.execute(
        "INSERT INTO registers (id, closed_system, counter_bytes, aes_key, timezone,"
        " receipt_id_format, state, active_unit, last_number, turnover_cents, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, 0, 0, ?)",
        (
            setup.register_id,
            closed,
            setup.counter_bytes,
            base64.b64encode(setup.aes_key).decode(),
            setup.timezone,
            setup.receipt_id_format,
            setup.unit_ids[0],
            now,
        ),
    )
    conn.executemany(
        "INSERT INTO register_units (register_id, position, unit_id) VALUES (?, ?, ?)",
        [(setup.register_id, i, u) for i, u in enumerate(setup.unit_ids)],
    )
    append_event(
        conn,
        kind="register.initialized",
        register_id=setup.register_id,
        at=now,
        data={
            "units": list(setup.unit_ids),
            "closed_system": closed,
            "counter_bytes": setup.counter_bytes,
            "timezone": setup.timezone,
        },
    )


def register_row(conn: sqlite3.Connection, register_id: str) -> sqlite3.Row:
    """The ``registers`` row; refuses a register that does not exist (or waits for its
    Startbeleg)."""
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM registers WHERE id = ?", (register_id,)
    ).fetchone()
    if row is None:
        if open_waiting(conn, register_id, "start", None) is not None:
            raise WaitsForUnit(
                f"register {register_id} waits for its Startbeleg: the signature unit"
                " is down; it is issued as soon as the unit answers"
            )
        raise InvalidSale(
            "register",
            "register-unknown",
            f"register {register_id!r} is not initialized on this till",
        )
    return row


def open_register(conn: sqlite3.Connection, register_id: str) -> sqlite3.Row:
    """:func:`register_row` of a register that issues receipts (not closed)."""
    reg = register_row(conn, register_id)
    if reg["state"] != "active":
        if open_waiting(conn, register_id, "closing", None) is not None:
            raise WaitsForUnit(CLOSING_SENT.format(register=register_id))
        raise RegisterClosed(register_id)
    return reg


def refuse_pending_start(conn: sqlite3.Connection, register_id: str) -> None:
    """A Startbeleg the chain service may hold is completed by recovery, never anew."""
    waiting = open_waiting(conn, register_id, "start", None)
    if waiting is not None and "issued_at" in json.loads(waiting["setup"]):
        raise WaitsForUnit(START_SENT.format(register=register_id))


def setup_json(
    setup: RegisterSetup,
    issued_at: str | None = None,
    *,
    receipt_id: str | None = None,
    unit_position: int | None = None,
) -> str:
    """The waiting Startbeleg's register; ``issued_at``: the date of one that was sent, and
    ``receipt_id``, ``unit_position``: a scenario replay's (see :func:`start_unit`)."""
    data: dict[str, Any] = {
        "register_id": setup.register_id,
        "units": list(setup.unit_ids),
        "counter_bytes": setup.counter_bytes,
        "aes_key": base64.b64encode(setup.aes_key).decode(),
        "timezone": setup.timezone,
        "receipt_id_format": setup.receipt_id_format,
    }
    sent = {"issued_at": issued_at, "receipt_id": receipt_id, "unit_position": unit_position}
    data.update((key, value) for key, value in sent.items() if value is not None)
    return canonical_json(data)


def start_unit(setup: RegisterSetup, position: int | None) -> str:
    """The unit that signs the register's Startbeleg: the first, or (a scenario replay)
    the one at ``position``."""
    if position is None:
        return setup.unit_ids[0]
    if not 0 <= position < len(setup.unit_ids):
        raise InvalidSale(
            "unit_position",
            "unit-unknown",
            f"register {setup.register_id} has no unit at position {position}",
        )
    return setup.unit_ids[position]


def setup_from_json(text: str) -> RegisterSetup:
    data = json.loads(text)
    return RegisterSetup(
        data["register_id"],
        data["units"],
        data["counter_bytes"],
        base64.b64decode(data["aes_key"]),
        data["timezone"],
        data["receipt_id_format"],
    )


def _unit_zdas(conn: sqlite3.Connection, unit_ids: Sequence[str]) -> list[str]:
    if not unit_ids:
        raise InvalidSale("units", "min-items", "a register needs at least one unit")
    zdas = []
    for unit_id in unit_ids:
        row = conn.execute("SELECT zda FROM units WHERE id = ?", (unit_id,)).fetchone()
        if row is None:
            raise InvalidSale("units", "unit-unknown", f"no signature unit {unit_id!r}")
        zdas.append(str(row[0]))
    return zdas


def check_setup(setup: RegisterSetup) -> None:
    """Refuse a register that could never sell, before anything is written."""
    if not is_register_id(setup.register_id):
        raise InvalidSale("register", "id-format", REGISTER_ID_RULE)
    check_receipt_id_format(setup.receipt_id_format)
    if not MIN_COUNTER_BYTES <= setup.counter_bytes <= ISSUED_COUNTER_BYTES_MAX:
        raise InvalidSale("counter_bytes", "range", ISSUED_COUNTER_BYTES_RULE)
    if setup.timezone not in AUSTRIAN_ZONES:
        raise InvalidSale(
            "timezone",
            "time-zone",
            f"receipts carry Austrian local time (reference/rksv.md 1.1): the time zone must"
            f" be Europe/Vienna, not {setup.timezone!r}",
        )
    try:
        ZoneInfo(setup.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSale("timezone", "time-zone", f"unknown time zone {setup.timezone!r}") from exc
    if len(setup.aes_key) != 32:
        raise InvalidSale("aes_key", "aes-256", "the AES key must be 32 bytes")


def check_receipt_id_format(value: str) -> None:
    """Refuse a receipt id format that could ever give two receipts one id, or an id that
    :func:`~agent.receipt_records.check_id` refuses (see :data:`RECEIPT_ID_FORMAT_RULE`):
    the config's ``[register] receipt_id_format`` and ``init --receipt-id-format`` both.

    Only plain decimal numbers are allowed: ``'{number:.1e}'`` gives receipts 100 and
    101 the same id, and ``'{number:_}'`` an id with '_' from 1000 on.
    """
    match = _RECEIPT_ID_FORMAT.fullmatch(value)
    literal = "" if match is None else match["prefix"] + match["suffix"]
    if (
        match is None
        or not literal.isprintable()
        or len(literal) > _MAX_LITERAL
        or int(match["width"] or 1) > _MAX_WIDTH
    ):
        raise InvalidSale("receipt_id_format", "format", f"{value!r}: {RECEIPT_ID_FORMAT_RULE}")

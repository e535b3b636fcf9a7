"""A register goes on with another signature unit: the one it signs with failed for good
(a stolen or broken card, a replaced certificate), or is retired.

The chain of receipts does not care which unit signed a receipt (rksv.md 4: the official
scenarios rotate devices inside one chain), so the switch changes nothing but the unit the
next receipts are signed with. It is one write transaction: the unit joins the register's
units if it is new to it (the DEP export and the crypto container read them), the
register's ``active_unit`` moves to it, a ``register.unit_switched`` journal event names
the register, the old unit and the new one (DESIGN.md invariant 7), and the FinanzOnline
obligation of the new unit is recorded (``unit``, :mod:`agent.checks`; none for a
development unit).

A development register (its receipts carry the fictitious provider AT100) switches only
between development units: a register goes live with its own Startbeleg signed by the
registered unit (rksv.md 6: it is checked right after registering unit and register), and a
development register's Startbeleg never passes the Belegcheck, so it is refused a certified
unit (``development-to-registered``: set up a new register on it). The reverse is refused
too: the receipts of a register that signs (or signed) with a certified unit would carry
the fictitious provider, and the failure of its unit is still owed to FinanzOnline.

A switch back to the registered unit, the certified one that signed the register's latest
receipt (undoing a mistaken switch before any receipt of it), owes nothing new: that unit
is registered, and the open ``unit`` obligation of the mistaken switch is withdrawn
(:func:`agent.checks.withdraw_unit_check`, journaled). Once the operator recorded that
obligation, though, FinanzOnline knows the unit switched to (and the failure of the one
before): the unit it registered is the registered one (:func:`agent.checks.registered_unit`).
A switch away from it before any receipt owes its own ``unit`` check, of the same first
receipt as the recorded one, which stays recorded: register the unit (again, if it signed
the latest receipt) and report the failure of the one the recorded check registered. A
switch back to that one withdraws it in turn.

A chain signing a process left unfinished is stored before the switch
(:func:`agent.interrupted.store_interrupted`, as any write transaction of
:class:`agent.issuing.Issuing` does): its receipt is the old unit's, and the new unit signs
from the one after it.

What waited for the old unit (an open outage, unsigned receipts, a waiting Jahresbeleg) now
waits for the new one: recovery (``outage recover``, the running service's probe) signs the
Sammelbeleg with it.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Literal

from agent.checks import (
    development_units,
    development_zda,
    due_date,
    record_due,
    registered_unit,
    replaced_unit,
    withdraw_unit_check,
)
from agent.errors import FiscalError, InvalidSale, NotFound, SigningError
from agent.receipt_records import local_stamp
from agent.registers import check_unit_serials, open_register
from agent.remedy import unresolved
from agent.signing import SignatureUnit, sign_verified
from agent.waiting import any_waiting
from storage.journal import append_event

__all__ = ["SWITCHED", "Owed", "UnitSwitch", "check_signs_now", "check_switch", "switch_unit"]

SWITCHED = "register.unit_switched"  # the journal event of a switch
_TEST_INPUT = b"till-agent unit switch: test signature"
# what a switch owes in FinanzOnline: nothing (``unchanged``: no switch; ``development``:
# a development unit; ``back``: the unit FinanzOnline knows again), or the ``unit``
# obligation (register the new unit, report the failure of the replaced one, Belegcheck)
Owed = Literal["unchanged", "development", "back", "unit"]


@dataclass(frozen=True, slots=True)
class UnitSwitch:
    """What a switch did (``switched`` False: the register signed with the unit already).

    ``added``: the unit joined the register's units; ``from_number``: the first receipt
    the new unit signs (or marks as failed); ``waiting``: something waits for the unit
    (an open outage, unsigned receipts, a waiting special receipt), which recovery now
    issues with it; ``due``: when the FinanzOnline steps of the new unit are due
    (register time zone), ``None`` when nothing is owed; ``replaced``: the unit whose
    failure is reported there (the one FinanzOnline knows:
    :func:`agent.checks.registered_unit`), ``None`` when nothing is reported; ``owed``:
    which case (see :data:`Owed`); ``withdrawn``: the open ``unit`` obligation a switch
    back withdrew; ``again``: the new unit signed the latest receipt, and a recorded
    ``unit`` check reported its failure: it is registered in FinanzOnline again.
    """

    register_id: str
    old_unit: str
    new_unit: str
    switched: bool
    added: bool = False
    from_number: int = 0
    waiting: bool = False
    due: dt.date | None = None
    replaced: str | None = None
    owed: Owed = "unchanged"
    withdrawn: int | None = None
    again: bool = False


def check_switch(conn: sqlite3.Connection, register_id: str, unit_id: str) -> sqlite3.Row:
    """The register ``register_id`` if it may switch to ``unit_id``.

    Raises:
        NotFound: no such register or no such stored unit.
        RegisterClosed: the register was closed by its Schlussbeleg (nothing to sign).
        WaitsForUnit: its Startbeleg or its Schlussbeleg waits for a chain service that
            may hold it (it is sent again unchanged, to the unit that got it).
        InvalidSale: the unit is of the other system type (``system-type-changed``), is
            a development unit and the register a certified one's
            (``registered-to-development``), is a certified unit and the register a
            development one (``development-to-registered``), or has the serial of another
            of the register's units (``serial-unique``).
    """
    try:
        reg = open_register(conn, register_id)
    except InvalidSale as exc:
        if exc.rule != "register-unknown":  # closed by its Schlussbeleg
            raise
        message = f"register {register_id!r} is not initialized in this till database"
        raise NotFound(message) from exc
    unit = conn.execute("SELECT zda FROM units WHERE id = ?", (unit_id,)).fetchone()
    if unit is None:
        raise NotFound(
            f"no signature unit {unit_id!r} is stored in this till database (till-agent unit"
            " list); add it first (unit add-pkcs11, or unit create-software for development)"
            " [unit-unknown]"
        )
    if unit_id == reg["active_unit"]:
        return reg
    closed = unit[0] == "AT0"
    if closed != bool(reg["closed_system"]):
        system = "a closed system (AT0)" if reg["closed_system"] else "an open system"
        theirs = "a closed-system (AT0) unit" if closed else "an open-system unit"
        raise InvalidSale(
            "unit",
            "system-type-changed",
            f"register {register_id} is {system}, and {unit_id} is {theirs}: one register's"
            " receipts never mix open and closed (the verifier's system-type-changed); a"
            " unit of the other type needs a new register (till-agent init)",
        )
    development = development_units(conn)
    if unit_id in development:
        _refuse_development(conn, reg, unit_id)
    elif reg["active_unit"] in development:
        _refuse_going_live(conn, reg, unit_id)
    check_unit_serials(conn, [*_units_of(conn, register_id), unit_id])
    return reg


def check_signs_now(unit: SignatureUnit, timeout: float) -> None:
    """Check that ``unit`` signs now: a test signature verified against its key, as
    ``unit add-pkcs11`` makes one. A chain service is only asked whether it answers: it
    would keep a test signature in its own chain of receipts.

    Raises:
        FiscalError: it does not sign (or answer) within ``timeout`` seconds, or its
            signature does not verify; the message names the unit and the rule.
    """
    unit_id = unit.identity.unit_id
    try:
        if unit.capabilities.keeps_chain:
            unit.probe(deadline=time.monotonic() + timeout)
        else:
            sign_verified(unit, _TEST_INPUT, timeout=timeout)
    except (SigningError, OSError) as exc:
        raise FiscalError(
            f"unit {unit_id} does not sign now ({exc}): a register switches only to a unit"
            " whose test signature verifies; nothing was changed [unit-signs]"
        ) from exc


def switch_unit(
    conn: sqlite3.Connection, register_id: str, unit_id: str, at: dt.datetime
) -> UnitSwitch:
    """Switch register ``register_id`` to unit ``unit_id`` in the caller's write
    transaction (``at``: now); the caller checked with :func:`check_signs_now` that the
    unit signs. A register that signs with it already changes nothing.

    Raises:
        The refusals of :func:`check_switch`.
        FiscalError: a chain signing of the register was interrupted and its receipt is
            not stored yet (rule ``signing-interrupted``): the caller switches in a
            transaction of :class:`agent.issuing.Issuing`, which stores it first.
    """
    reg = check_switch(conn, register_id, unit_id)
    old = str(reg["active_unit"])
    development = development_units(conn)
    if unit_id == old:
        return UnitSwitch(register_id, old, unit_id, switched=False)
    _check_settled(conn, register_id, int(reg["last_number"]))
    added = unit_id not in _units_of(conn, register_id)
    if added:
        conn.execute(
            "INSERT INTO register_units (register_id, position, unit_id) SELECT ?,"
            " coalesce(max(position), -1) + 1, ? FROM register_units WHERE register_id = ?",
            (register_id, unit_id, register_id),
        )
    conn.execute("UPDATE registers SET active_unit = ? WHERE id = ?", (unit_id, register_id))
    number = int(reg["last_number"]) + 1
    waiting = _waits(conn, register_id)
    append_event(
        conn,
        kind=SWITCHED,
        register_id=register_id,
        at=at.isoformat(),
        data={
            "old_unit": old,
            "new_unit": unit_id,
            "added": added,
            "from_number": number,
            "waiting": waiting,
        },
    )
    done = UnitSwitch(
        register_id, old, unit_id, switched=True, added=added, from_number=number, waiting=waiting
    )
    replaced = None if unit_id in development else registered_unit(conn, register_id, number)
    if replaced == unit_id:
        # back on the unit FinanzOnline knows before any receipt of the switch away from it
        reason = (
            f"register {register_id} switched back to unit {unit_id}, registered in"
            f" FinanzOnline, before receipt {number}: nothing is owed there"
        )
        withdrawn = withdraw_unit_check(conn, register_id, number, at, reason)
        return replace(done, owed="back", withdrawn=withdrawn)
    # the new unit is registered in FinanzOnline as a new register's is (rksv.md 5, 6); a
    # switch before it that no receipt followed owes it already, in its open check
    stamp = local_stamp(at, reg["timezone"])
    owed = record_due(conn, register_id, "unit", number, stamp, None, at, unit_id=unit_id)
    if unit_id in development:
        return replace(done, owed="development")
    due = due_date("unit", stamp)
    if owed is None:
        due = _open_due(conn, register_id, number) or due
    # the unit of the latest receipt, whose failure a recorded check of a switch away
    # from it reported: registered again
    again = unit_id == replaced_unit(conn, register_id, number)
    return replace(done, owed="unit", due=due, replaced=replaced, again=again)


def _refuse_development(conn: sqlite3.Connection, reg: sqlite3.Row, unit_id: str) -> None:
    """Refuse the development unit ``unit_id`` to a register that signs, or signed, with a
    certified unit: it is registered in FinanzOnline (or owes it), and the receipts would
    carry the fictitious test provider, which no registration nor Belegcheck accepts. A
    development register may switch between development units."""
    register_id, old = str(reg["id"]), str(reg["active_unit"])
    signs = old not in development_units(conn)
    certified = old if signs else replaced_unit(conn, register_id, int(reg["last_number"]) + 1)
    if certified is None:
        return
    (zda,) = conn.execute("SELECT zda FROM units WHERE id = ?", (certified,)).fetchone()
    dev_zda = development_zda()
    raise InvalidSale(
        "unit",
        "registered-to-development",
        f"register {register_id} {'signs' if signs else 'signed'} with the certified unit"
        f" {certified} (R1-{zda}), and {unit_id} is a development unit: from the switch on"
        f" its receipts would carry the fictitious test provider {dev_zda} (R1-{dev_zda}),"
        " which FinanzOnline does not register and no Belegcheck accepts, so the register"
        " would sign with no registered unit. Switch to a certified unit (till-agent unit"
        f" add-pkcs11 --zda ...), or set up a development register on {unit_id} (till-agent"
        f" init NEW-ID --unit {unit_id}); nothing was changed",
    )


def _refuse_going_live(conn: sqlite3.Connection, reg: sqlite3.Row, unit_id: str) -> None:
    """Refuse the certified unit ``unit_id`` to a development register, whose receipts all
    carry the fictitious test provider: its Startbeleg, checked with the Belegcheck right
    after the register is registered (rksv.md 6), never passes, which counts as a failed
    unit. A register that signed with a certified unit before (an earlier version switched
    it to a development one) goes on with another certified one: it owes that failure."""
    register_id = str(reg["id"])
    if replaced_unit(conn, register_id, int(reg["last_number"]) + 1) is not None:
        return
    dev_zda = development_zda()
    raise InvalidSale(
        "unit",
        "development-to-registered",
        f"register {register_id} is a development register: its receipts, its Startbeleg"
        f" first, carry the fictitious test provider {dev_zda} (R1-{dev_zda}), which no"
        f" Belegcheck accepts, and {unit_id} is a certified unit. A register goes live with"
        " its own Startbeleg signed by the registered unit: set up a new register on the"
        f" certified unit (till-agent init NEW-ID --unit {unit_id}) and register both in"
        " FinanzOnline; nothing was changed",
    )


def _check_settled(conn: sqlite3.Connection, register_id: str, last_number: int) -> None:
    """Refuse to switch over a chain signing whose receipt is not stored: it is the old
    unit's, and the number after it the new one's first (an intent past the register's
    last number that is not void, the last one: :data:`agent.interrupted._INTERRUPTED`)."""
    row = conn.execute(
        "SELECT number, intent FROM pending_signings WHERE register_id = ? AND number > ?"
        " ORDER BY id DESC LIMIT 1",
        (register_id, last_number),
    ).fetchone()
    if row is not None and "void" not in json.loads(row[1]):
        raise FiscalError(
            f"register {register_id}: the chain signing of receipt {row[0]} was interrupted"
            " and its receipt is not stored yet; a write transaction of the receipt service"
            " stores it first, then the switch starts after it [signing-interrupted]"
        )


def _units_of(conn: sqlite3.Connection, register_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT unit_id FROM register_units WHERE register_id = ? ORDER BY position",
        (register_id,),
    )
    return [str(row[0]) for row in rows]


def _waits(conn: sqlite3.Connection, register_id: str) -> bool:
    """Whether something of the register waits for its unit: an open outage, unsigned
    receipts to remedy, a waiting special receipt (what the probe recovers)."""
    outage = conn.execute(
        "SELECT 1 FROM outages WHERE register_id = ? AND ended_at IS NULL", (register_id,)
    ).fetchone()
    return (
        outage is not None or bool(unresolved(conn, register_id)) or any_waiting(conn, register_id)
    )


def _open_due(conn: sqlite3.Connection, register_id: str, number: int) -> dt.date | None:
    row = conn.execute(
        "SELECT due_date FROM checks WHERE register_id = ? AND kind = 'unit'"
        " AND receipt_number = ? AND done_at IS NULL",
        (register_id, number),
    ).fetchone()
    return None if row is None else dt.date.fromisoformat(row[0])

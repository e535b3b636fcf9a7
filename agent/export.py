"""DEP7 export and the crypto material container, streamed from the till database.

Receipts are read in number order with a streaming cursor and grouped by the unit whose
serial they carry (fallback receipts stay in the group of the unit they name), so memory
stays bounded however many receipts a register has.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from typing import IO, Any

from sqlalchemy import Connection, Select, bindparam, func, select

from agent.at_rksv.dep import DepGroup, container_json, write_dep
from agent.errors import NotFound
from agent.signing import Identity
from storage.db import TillDB
from storage.models import RECEIPTS, REGISTER_UNITS, REGISTERS, UNITS

__all__ = ["count_receipts", "export_container", "export_dep"]

_R = RECEIPTS
# the register's first receipt numbered ``number`` or later (a step of _first_dated)
_AT_OR_AFTER = (
    select(_R.c.number, _R.c.issued_at)
    .where(_R.c.register_id == bindparam("register_id"), _R.c.number >= bindparam("number"))
    .order_by(_R.c.number)
    .limit(1)
)


def _register(conn: Connection, register_id: str) -> Any:
    row = conn.execute(select(REGISTERS).where(REGISTERS.c.id == register_id)).first()
    if row is None:
        raise NotFound(f"register {register_id!r} is not initialized in this till database")
    return row


def _identities(conn: Connection, register_id: str) -> dict[str, Identity]:
    rows = conn.execute(
        select(UNITS)
        .join(REGISTER_UNITS, REGISTER_UNITS.c.unit_id == UNITS.c.id)
        .where(REGISTER_UNITS.c.register_id == register_id)
        .order_by(REGISTER_UNITS.c.position)
    ).all()
    return {
        r.id: Identity(r.id, r.zda, r.serial, r.public_key_der, r.certificate_der) for r in rows
    }


def _in_range(
    conn: Connection,
    query: Select[Any],
    register_id: str,
    start: dt.date | None,
    end: dt.date | None,
) -> Select[Any]:
    """``query`` bounded to the receipts dated ``start`` to ``end`` (inclusive) by number.

    Dates never go back within a register (DESIGN.md invariant 2), so a range of dates is
    a range of numbers, read through the (register_id, number) index. A condition on
    ``issued_at`` read every receipt of the register: it has no index, and one would cost
    every receipt's commit a page more."""
    if start is not None:
        query = query.where(_R.c.number >= _first_dated(conn, register_id, start.isoformat()))
    if end is not None and end < dt.date.max:  # the last date there is bounds nothing
        after = (end + dt.timedelta(days=1)).isoformat()
        query = query.where(_R.c.number < _first_dated(conn, register_id, after))
    return query


def _first_dated(conn: Connection, register_id: str, bound: str) -> int:
    """The number from which the register's receipts are dated ``bound`` or later: the
    first such receipt's, or one past the last receipt's when none is. A bisection over
    the numbers, each step one seek of the index (about 17 for 100,000 receipts)."""
    last = conn.execute(select(func.max(_R.c.number)).where(_R.c.register_id == register_id))
    low, high = 0, int(last.scalar() or 0) + 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(_AT_OR_AFTER, {"register_id": register_id, "number": middle}).first()
        if row is None or row.issued_at >= bound:
            high = middle  # no receipt from middle on is dated before bound
        else:
            low = row.number + 1
    return low


def _rows(
    conn: Connection, register_id: str, start: dt.date | None, end: dt.date | None
) -> Iterator[Any]:
    query = select(_R.c.unit_id, _R.c.jws).where(_R.c.register_id == register_id)
    query = _in_range(conn, query, register_id, start, end).order_by(_R.c.number)
    yield from conn.execution_options(yield_per=2000).execute(query)


def count_receipts(
    db: TillDB, register_id: str, *, start: dt.date | None = None, end: dt.date | None = None
) -> int:
    """How many receipts :func:`export_dep` will write (for progress)."""
    query = select(func.count()).select_from(_R).where(_R.c.register_id == register_id)
    with db.engine.connect() as conn:
        _register(conn, register_id)
        return int(conn.execute(_in_range(conn, query, register_id, start, end)).scalar_one())


def export_dep(
    db: TillDB,
    register_id: str,
    out: IO[str] | IO[bytes],
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    on_receipt: Callable[[], None] | None = None,
) -> int:
    """Write the DEP7 export of one register to ``out``; return the number of receipts.

    Args:
        start, end: optional inclusive range of receipt dates (local dates of the register).
        on_receipt: called after each receipt written (progress).
    """
    count = 0
    with db.engine.connect() as conn:
        reg = _register(conn, register_id)
        units = _identities(conn, register_id)

        def groups() -> Iterator[DepGroup]:
            # closed systems have no certificates: one group; open ones group by certificate
            def key(row: Any) -> str | None:
                return None if reg.closed_system else str(row.unit_id)

            for unit_id, rows in itertools.groupby(_rows(conn, register_id, start, end), key):
                cert = None if unit_id is None else units[unit_id].certificate_der
                yield DepGroup(cert, (), _counted(row.jws for row in rows))

        def _counted(items: Iterator[str]) -> Iterator[str]:
            nonlocal count
            for item in items:
                count += 1
                yield item
                if on_receipt is not None:
                    on_receipt()

        write_dep(out, groups())
    return count


def export_container(db: TillDB, register_id: str) -> str:
    """The crypto material container (AES key and every unit's certificate or public key)."""
    with db.engine.connect() as conn:
        reg = _register(conn, register_id)
        units = _identities(conn, register_id)
    return container_json(base64.b64decode(reg.aes_key), units.values())

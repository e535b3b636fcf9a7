"""A switch may owe a unit check at a receipt number whose unit check is recorded already.

A switch before any receipt of the one before it starts from the same receipt number.
While that number's ``unit`` check is open, it covers both; once it is recorded, the unit
it registered is the one FinanzOnline knows, and a switch away from it (back to the unit
before it, or on to a third) owes a check of its own, which ``ix_checks_unit_switch`` (one
``unit`` check per receipt number, 0011) refused: it was dropped. The uniqueness now holds
for the open ones only (``ix_checks_unit_switch_open``): at most one open ``unit`` check
per receipt number, any number recorded. ``registered_unit`` keeps the unit a recorded
check registered (agent/checks.py): the one whose failure the next switch reports, and the
one a switch back to it finds registered.

The recorded unit checks get it from the journal: the ``new_unit`` of the last
``register.unit_switched`` event from their receipt number before their latest
``check.done``, the unit the register was switched to when the check was recorded. A till of
0011 may have switched away from that unit after it at the same number (the dropped check):
the unit of the receipt of their number, or the register's active unit, is then the unit
switched to after the check, not the one it registered. A check the journal has no such
switch for (none is known) gets the unit of its receipt, or, with none yet, the
register's active unit.

The check that switch owed is not created here: an obligation is journaled (``check.due``),
and a migration writes no journal event but its own (0004 says why). The check timer's
first tick after a start adopts it (agent/checks.py, ``_dropped_unit_checks``): a recorded
unit check, the latest of its number, whose unit is not the one of its number (its receipt,
or with none yet the active unit) with no open check of that number, is due a week after
the switch away from it (the journal's). A downgrade keeps the latest unit check of each
receipt number.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# the recorded unit checks the journal names no switch for: as agent/checks.py records them
_RECORDED = """
UPDATE checks SET registered_unit = coalesce(
  (SELECT x.unit_id FROM receipts x WHERE x.register_id = checks.register_id
   AND x.number = checks.receipt_number),
  (SELECT r.active_unit FROM registers r WHERE r.id = checks.register_id))
WHERE kind = 'unit' AND done_at IS NOT NULL AND registered_unit IS NULL
"""


def upgrade() -> None:
    op.add_column("checks", sa.Column("registered_unit", sa.String(64), nullable=True))
    conn = op.get_bind()
    for check_id, unit in _switched_to(conn).items():
        conn.execute(
            sa.text("UPDATE checks SET registered_unit = :unit WHERE id = :id"),
            {"unit": unit, "id": check_id},
        )
    op.execute(_RECORDED)
    op.drop_index("ix_checks_unit_switch", table_name="checks")
    op.create_index(
        "ix_checks_unit_switch_open",
        "checks",
        ["register_id", "receipt_number"],
        unique=True,
        sqlite_where=sa.text("kind = 'unit' AND done_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_checks_unit_switch_open", table_name="checks")
    op.execute(
        "DELETE FROM checks WHERE kind = 'unit' AND id NOT IN (SELECT max(id) FROM checks"
        " WHERE kind = 'unit' GROUP BY register_id, receipt_number)"
    )
    with op.batch_alter_table("checks") as batch:
        batch.drop_column("registered_unit")
    op.create_index(
        "ix_checks_unit_switch",
        "checks",
        ["register_id", "receipt_number"],
        unique=True,
        sqlite_where=sa.text("kind = 'unit'"),
    )


def _switched_to(conn: sa.Connection) -> dict[int, str]:
    """The unit each recorded unit check registered, by the journal: the ``new_unit`` of
    the last switch from its receipt number before its latest ``check.done`` (of its id and
    reference: a downgrade of 0011 deleted unit checks, whose ids may be another's now).
    The journal is read once, its switches and check.done events (no index holds them, as
    0010 reads it)."""
    events = conn.execute(
        sa.text(
            "SELECT seq, register_id, kind, data FROM journal"
            " WHERE kind IN ('register.unit_switched', 'check.done') ORDER BY seq"
        )
    )
    switches: dict[tuple[str, int], list[tuple[int, str]]] = {}
    done: dict[tuple[str, int, str], int] = {}
    for seq, register_id, kind, data in events:
        facts = json.loads(data)
        if kind == "register.unit_switched":
            key = (register_id, int(facts["from_number"]))
            switches.setdefault(key, []).append((int(seq), str(facts["new_unit"])))
        elif facts.get("kind") == "unit":
            done[register_id, int(facts["check"]), str(facts["reference"])] = int(seq)
    recorded = conn.execute(
        sa.text(
            "SELECT id, register_id, receipt_number, reference FROM checks"
            " WHERE kind = 'unit' AND done_at IS NOT NULL"
        )
    )
    units: dict[int, str] = {}
    for check_id, register_id, number, reference in recorded:
        at = done.get((register_id, int(check_id), str(reference)))
        before = [
            unit
            for seq, unit in switches.get((register_id, int(number)), [])
            if at is not None and seq < at
        ]
        if before:
            units[int(check_id)] = before[-1]
    return units

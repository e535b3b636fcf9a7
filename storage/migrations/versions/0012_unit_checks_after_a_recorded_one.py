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

The recorded unit checks get it from the receipt of their number, or, with none yet, the
register's active unit. A downgrade keeps the latest unit check of each receipt number.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_RECORDED = """
UPDATE checks SET registered_unit = coalesce(
  (SELECT x.unit_id FROM receipts x WHERE x.register_id = checks.register_id
   AND x.number = checks.receipt_number),
  (SELECT r.active_unit FROM registers r WHERE r.id = checks.register_id))
WHERE kind = 'unit' AND done_at IS NOT NULL
"""


def upgrade() -> None:
    op.add_column("checks", sa.Column("registered_unit", sa.String(64), nullable=True))
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

"""The rare receipts the agent looks for get partial indexes of their own.

The probe loop (at least once a second, also when the till is idle), the status and the
remedy look for the ``unsigned`` receipts not yet remedied; a Storno, inside its write
transaction, asks whether the receipt it voids is voided already, and the remedy which
receipt voided one; the check watch, at each start, looks for the Start- and Jahresbelege
of registers without an obligation; the backup job looks up its ``dep.backup_late``
events. None of them had an index that bounds the rows, so each read every receipt of the
till (or of the register, or the whole journal), and took longer the longer the till had
sold: measured on 214,629 receipts (528 MB), a probe 130 ms of CPU and 293 MB read, a
status 300-440 ms, a Storno 180 ms while it held the write lock.

Each index holds only the rows its queries look for, which are rare: the unsigned
receipts (a chain service's lost answers), the Stornos, the Start- and Jahresbelege, the
late-backup events. An ordinary signed sale writes no entry in any of them, so its commit
writes the same pages as before. SQLite uses a partial index only for a query whose WHERE
implies the index's, so the queries repeat the predicate (``voids_number = ?`` implies
``voids_number IS NOT NULL``). Creating them reads the receipts three times and the
journal once at the upgrade (0.3 s each, 1.3 s in all for the till above), as the
``quick_check`` of every start does (1.5 s there).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_receipts_unsigned",
        "receipts",
        ["register_id", "number"],
        sqlite_where=sa.text("signature_state = 'unsigned'"),
    )
    op.create_index(
        "ix_receipts_voids",
        "receipts",
        ["register_id", "voids_number", "number"],
        sqlite_where=sa.text("voids_number IS NOT NULL"),
    )
    op.create_index(
        "ix_receipts_start_yearly",
        "receipts",
        ["register_id", "number"],
        sqlite_where=sa.text("kind IN ('start', 'yearly')"),
    )
    op.create_index(
        "ix_journal_backup_late",
        "journal",
        ["register_id"],
        sqlite_where=sa.text("kind = 'dep.backup_late'"),
    )


def downgrade() -> None:
    op.drop_index("ix_journal_backup_late", table_name="journal")
    op.drop_index("ix_receipts_start_yearly", table_name="receipts")
    op.drop_index("ix_receipts_voids", table_name="receipts")
    op.drop_index("ix_receipts_unsigned", table_name="receipts")

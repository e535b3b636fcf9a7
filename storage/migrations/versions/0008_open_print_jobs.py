"""The open print jobs get an index of their own; printed jobs keep no bytes.

The print worker asks every second for the open jobs (``state IN ('queued', 'failed')``)
and the status counts them. Without an index each ask read the whole table, past every
printed job's ESC/POS bytes (0.7 KB with a native QR code, 7.5 KB with an image, most
of it in overflow pages), and took longer the longer the till had sold.
``ix_print_jobs_open`` holds only the open jobs (a partial index, a few entries), in the
order they are sent. The worker empties a job's bytes once it is printed (a reprint
renders the stored receipt again), so the table stops growing by the bytes.

The bytes of jobs printed before this upgrade are left as they are. Emptying them here
would rewrite every old row in the one transaction that holds the start-up: measured on
a 200,000-job table, 5 s and a 157 MB write-ahead log for native QR codes, 24 s and a
785 MB log for 100,000 image QR codes (more on an SD card), proportional to the table
and needing that much free disk, on the tills where the table has grown the most. It
would gain no speed (nothing reads those rows now) and no disk space: SQLite only reuses
the freed pages, the file shrinks only by a VACUUM. An operator who wants the space back
runs, with the service stopped and a copy taken, ``UPDATE print_jobs SET data = x''
WHERE state IN ('printed', 'skipped'); VACUUM;`` (VACUUM needs the database's size free
again). Creating the index reads the table once (0.7 s and 3 s for the tables above),
as the ``quick_check`` of every start already does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_print_jobs_open",
        "print_jobs",
        ["id"],
        sqlite_where=sa.text("state IN ('queued', 'failed')"),
    )


def downgrade() -> None:
    op.drop_index("ix_print_jobs_open", table_name="print_jobs")

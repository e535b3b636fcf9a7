"""Two FinanzOnline reports the operator owes (rksv.md section 5) become records.

* ``checks.kind`` takes ``closing``: the decommissioning of a register must be reported
  within one week of its Schlussbeleg, an obligation like the Belegchecks (agent/checks.py).
* ``outages.end_report_due``: an outage past 48 hours must be reported, and so must its end
  (Wiederinbetriebnahme), within one week of the end.

Outages that ended past 48 hours before this upgrade get the due date of their end report
here: it is a fact of the row (its end plus seven days), computed without the wall clock
and without the journal. The outage watch reminds of a due report that has no reference
recorded, also when the date is long past: unlike a Belegcheck, a report not made can
still be made (late), and nothing else says that it was. Registers closed before this
upgrade get their ``closing`` obligation from the check timer's adoption (as 0004 says).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_END_REPORT_DAYS = 7  # agent.outage_watch.Thresholds.report_days, as of this revision


def upgrade() -> None:
    _check_kinds("kind IN ('start', 'yearly', 'closing')")
    op.add_column("outages", sa.Column("end_report_due", sa.String(32), nullable=True))
    conn = op.get_bind()
    ended = conn.execute(
        sa.text(
            "SELECT id, ended_at FROM outages WHERE ended_at IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM json_each(escalations) WHERE value = 'exceeded')"
        )
    ).fetchall()
    for outage_id, ended_at in ended:
        due = dt.datetime.fromisoformat(ended_at) + dt.timedelta(days=_END_REPORT_DAYS)
        conn.execute(
            sa.text("UPDATE outages SET end_report_due = :due WHERE id = :id"),
            {"due": due.isoformat(), "id": outage_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("outages") as batch:
        batch.drop_column("end_report_due")
    op.execute("DELETE FROM checks WHERE kind = 'closing'")
    _check_kinds("kind IN ('start', 'yearly')")


def _check_kinds(condition: str) -> None:
    """Rebuild ``checks`` with ``condition`` as its CHECK on ``kind`` (SQLite cannot alter
    a constraint in place: batch mode copies the table)."""
    with op.batch_alter_table("checks", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_checks_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_checks_kind"), condition)

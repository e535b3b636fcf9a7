"""A superseded receipt's resolution stores the Storno that voided it.

The remedy knows that Storno when it resolves the receipt and journals it
(``receipt.superseded``, ``voided_by``), but ``receipt_resolutions`` had no column for it,
so the views found it again by a rule of their own: the first receipt voiding it, before
its replacement if it has one. ``voided_number`` holds it now, written by the remedy, and
the views read it.

The resolutions made before this upgrade get it from their journal events. What a till
showed for them must not change, so the view's rule is asked too: the two agree for every
resolution this version makes. They can differ for one a remedy made before it left the
sales the POS had voided alone (2 December 2026): it reissued such a sale, and its event
names no Storno, or the remedy's own, where the rule found the POS's. The Storno the till
showed is kept then, and a WARNING names the receipt and both.

Both are read once: the journal's ``receipt.superseded`` events (no index holds them, so
the whole journal is read, as creating 0009's index on it did) and the Stornos of the
superseded receipts (through 0009's ``ix_receipts_voids``). Only the resolutions that name
a Storno are written: the append-only trigger on UPDATE is lifted for that and put back
unchanged in the same transaction.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import json
import logging

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_log = logging.getLogger("storage.migrate")

# the Storno the views named for a superseded receipt up to 0009 (agent/receipt_view.py)
_SHOWN = """
SELECT x.register_id, x.number, (SELECT min(s.number) FROM receipts s
  WHERE s.register_id = x.register_id AND s.number > x.number AND s.voids_number = x.number
  AND (x.replacement_number IS NULL OR s.number < x.replacement_number))
FROM receipt_resolutions x WHERE x.resolution = 'superseded'
"""


def upgrade() -> None:
    op.add_column("receipt_resolutions", sa.Column("voided_number", sa.Integer(), nullable=True))
    conn = op.get_bind()
    named = _journaled(conn)
    voided: dict[tuple[str, int], int] = {}
    for register_id, number, shown in conn.execute(sa.text(_SHOWN)):
        journaled = named.get((register_id, number))
        if journaled != shown:
            _log.warning(
                "register %s: the journal names %s as voiding superseded receipt %d, the"
                " till showed %s: it keeps showing that",
                register_id,
                _storno(journaled),
                number,
                _storno(shown),
            )
        if shown is not None:
            voided[register_id, number] = shown
    if not voided:
        return
    _append_only("update", drop=True)
    for (register_id, number), storno in voided.items():
        conn.execute(
            sa.text(
                "UPDATE receipt_resolutions SET voided_number = :storno"
                " WHERE register_id = :register_id AND number = :number"
            ),
            {"storno": storno, "register_id": register_id, "number": number},
        )
    _append_only("update")


def downgrade() -> None:
    # batch mode copies the table, which drops its triggers: they are made again after it
    for action in ("update", "delete"):
        _append_only(action, drop=True)
    with op.batch_alter_table("receipt_resolutions") as batch:
        batch.drop_column("voided_number")
    for action in ("update", "delete"):
        _append_only(action)


def _journaled(conn: sa.Connection) -> dict[tuple[str, int], int | None]:
    """The Storno each ``receipt.superseded`` event names (``None``: it names none)."""
    events = conn.execute(
        sa.text("SELECT register_id, data FROM journal WHERE kind = 'receipt.superseded'")
    )
    named: dict[tuple[str, int], int | None] = {}
    for register_id, data in events:
        facts = json.loads(data)
        named[register_id, int(facts["number"])] = facts.get("voided_by")
    return named


def _storno(number: int | None) -> str:
    return "no Storno" if number is None else f"Storno {number}"


def _append_only(action: str, *, drop: bool = False) -> None:
    """Drop or create the trigger of 0003 that refuses ``action`` on receipt_resolutions."""
    name = f"receipt_resolutions_no_{action}"
    if drop:
        op.execute(f"DROP TRIGGER {name}")
        return
    op.execute(
        f"CREATE TRIGGER {name} BEFORE {action.upper()} ON receipt_resolutions BEGIN"
        " SELECT RAISE(ABORT, 'receipt_resolutions is append-only'); END"
    )

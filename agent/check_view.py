"""Belegchecks (the decommissioning report, a unit switch's registration) as their readers
see them: the :class:`CheckOut` of a :class:`CheckRecord`, one vocabulary for
``open_checks`` in ``GET /v1/status``, the check route's answer and the command line's
JSON (``checks list``, ``checks done``)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from agent.checks import CheckKind, CheckRecord

__all__ = ["CheckOut", "check_out"]


class CheckOut(BaseModel):
    """A check the operator owes after a Startbeleg (``start``) or Jahresbeleg (``yearly``),
    the FinanzOnline report of the decommissioning after a Schlussbeleg (``closing``), or
    the FinanzOnline registration of the unit a register switched to (``unit``; ``number``:
    the first receipt after the switch, which names it among several): due by ``due`` (a
    date in the register's time zone), ``overdue`` past it while open, done once its
    ``reference`` is recorded (``failed``: the Belegcheck failed, and no later passing unit
    check of its receipt number settled it)."""

    # ``register`` is a BaseModel attribute: the field takes it as an alias
    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=True
    )

    register_id: str = Field(alias="register")
    kind: CheckKind
    year: int
    number: int
    due: dt.date
    overdue: bool
    alerts: list[str]
    reference: str | None
    failed: bool
    done_at: dt.datetime | None


def check_out(record: CheckRecord, now: dt.datetime) -> CheckOut:
    """The obligation ``record`` as the API and the command line show it at ``now``."""
    return CheckOut(
        register_id=record.register_id,
        kind=record.kind,
        year=record.year,
        number=record.receipt_number,
        due=record.due_date,
        overdue=record.overdue(now),
        alerts=list(record.alerts),
        reference=record.reference,
        failed=record.failed and not record.settled,
        done_at=None if record.done_at is None else dt.datetime.fromisoformat(record.done_at),
    )

"""Outages as their readers see them: the :class:`OutageOut` of an :class:`OutageRecord`,
one vocabulary for ``GET /v1/outages`` and the command line's JSON (``outage list``,
``outage show``, the evidence pack)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from agent.outages import OutageRecord

__all__ = ["OutageOut", "as_of", "outage_out"]


class OutageOut(BaseModel):
    """One outage, open (``ended_at`` null) or closed by its Sammelbeleg, or ended by the
    register's Schlussbeleg with the failure marker (``sammelbeleg_number`` null: the
    register was decommissioned inside it). Past 48 hours (or ended by a Schlussbeleg) it
    must be reported in FinanzOnline by ``report_due_at``, and the end of one past 48 hours
    that a Sammelbeleg closed by ``end_report_due_at`` (set when it closes); a report is
    done once its reference is recorded."""

    # ``register`` is a BaseModel attribute: the field takes it as an alias
    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=True
    )

    id: int
    register_id: str = Field(alias="register")
    unit: str
    started_at: dt.datetime
    ended_at: dt.datetime | None
    cause: str
    first_number: int | None
    last_number: int | None
    affected: int
    sammelbeleg_number: int | None
    escalations: list[str]
    report_due_at: dt.datetime | None
    report_reference: str | None
    end_report_reference: str | None
    end_report_due_at: dt.datetime | None


def outage_out(record: OutageRecord) -> OutageOut:
    """The outage ``record`` as the API and the command line show it."""
    return OutageOut(
        id=record.id,
        register_id=record.register_id,
        unit=record.unit_id,
        started_at=dt.datetime.fromisoformat(record.started_at),
        ended_at=_stamp(record.ended_at),
        cause=record.cause,
        first_number=record.first_number,
        last_number=record.last_number,
        affected=record.affected,
        sammelbeleg_number=record.sammelbeleg_number,
        escalations=list(record.escalations),
        report_due_at=_stamp(record.report_due),
        report_reference=record.report_reference,
        end_report_reference=record.end_report_reference,
        end_report_due_at=_stamp(record.end_report_due),
    )


def as_of(record: OutageRecord, now: dt.datetime) -> OutageRecord:
    """``record`` with the age it has at ``now`` (wall clock, UTC).

    The outage watch stores an open outage's age as of its last check (``checked_at``),
    and only a running service checks: one opened by ``till-agent issue`` keeps the age
    of its opening. An open outage's age so far adds the time since that check, never
    less than none (the wall clock may have gone back); a closed one is as stored.
    """
    if record.ended_at is not None:
        return record
    since = (now - dt.datetime.fromisoformat(record.checked_at)).total_seconds()
    return dataclasses.replace(record, age_seconds=record.age_seconds + max(0.0, since))


def _stamp(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)

"""Recovery: everything that waited for a signature unit, once it answers again.

- the remedy of unsigned receipts (DESIGN.md invariant 5): those the chain service holds
  are adopted, the others get a signed Nullbeleg, the Sammelbeleg that closes the outage
  and a reissue each (:mod:`agent.remedy` resolves them);
- the special receipts waiting for their unit (:mod:`agent.waiting`);
- the chain signings a process left unfinished (its intent committed, its receipt not),
  found when the next write transaction starts: they are stored as a lost answer would
  have stored them, so their numbers are never given to another receipt.

:class:`Recovery` decides what to issue; the receipt service (:class:`Issuer`) numbers,
signs and stores it, in its own transactions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from agent.at_rksv import jws_compact, split_jws
from agent.errors import FiscalError, SigningError, WaitsForUnit
from agent.receipt_records import (
    COUNTED,
    MUST_SIGN,
    Draft,
    Stored,
    any_lost,
    intended,
    raise_if_lost,
    receipt_row,
    stored_receipt,
)
from agent.receipt_view import result_from_parts
from agent.registers import (
    CLOSING_SENT,
    START_SENT,
    RegisterSetup,
    open_register,
    register_row,
    setup_from_json,
)
from agent.remedy import reissue_draft, resolve, resolve_voided, unresolved, void_draft
from agent.signing import sign_verified, verify_rs
from agent.waiting import (
    open_waiting,
    record_waiting,
    start_waits,
    waiting_done,
    waiting_in,
    waiting_rows,
)
from storage.journal import append_event, canonical_json

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.contract import ReceiptResult
    from agent.outages import OutageBook
    from agent.signing import SignatureUnit
    from storage.db import TillDB

__all__ = ["Issuer", "Recovery"]

_log = logging.getLogger(__name__)


class Issuer(Protocol):
    """What recovery uses of :class:`agent.receipts.ReceiptService`: its write transaction
    (one at a time; the outage book follows its fate) and its durable path."""

    db: TillDB
    clock: Clock
    outages: OutageBook
    sign_timeout: float

    def unit_of(self, register_id: str) -> SignatureUnit: ...

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def _issue_in(
        self, conn: sqlite3.Connection, reg: sqlite3.Row, draft: Draft
    ) -> ReceiptResult: ...

    def _start_in(
        self, conn: sqlite3.Connection, setup: RegisterSetup, stamp: str
    ) -> ReceiptResult | None: ...

    def _stamp_now(self, timezone: str) -> str: ...

    def _store(
        self, conn: sqlite3.Connection, stored: Stored, document: dict[str, Any], at: dt.datetime
    ) -> None: ...


class Recovery:
    """Recovers the registers of one receipt service (``service``) once their unit answers
    (:meth:`recover`), and, at the start of each of its write transactions, stores the
    chain signings a process left unfinished (:meth:`store_interrupted`)."""

    def __init__(self, service: Issuer) -> None:
        self._service = service

    def _now(self) -> str:
        return self._service.clock.now().isoformat()

    def store_interrupted(self, conn: sqlite3.Connection) -> None:
        """Store each signing whose process ended while the chain service signed (or before
        its COMMIT) as a lost answer would have: the service may hold it signed, so its
        number is never given to another receipt (recovery adopts or remedies it)."""
        for row in conn.execute(_INTERRUPTED).fetchall():
            self._interrupted(conn, row)

    def recover(self, register_id: str) -> list[ReceiptResult] | None:
        """Everything that waited for the unit of ``register_id``, once it answers again.

        In order: a waiting Startbeleg; unsigned receipts the chain service has are
        adopted; then in ONE transaction a signed Nullbeleg (if a sale must be reissued),
        the Sammelbeleg that closes the outage (right after the last fallback receipt, or
        right after that Nullbeleg, the first receipt signed again), and the reissued
        sales, each superseding its unsigned original (a sale the POS voided meanwhile is
        only resolved, see :func:`agent.remedy.resolve_voided`); then the other waiting
        special receipts (Jahresbelege, a Sammelbeleg, the Schlussbeleg last).
        A crash at any point leaves each step done completely or not at all, so a retry
        never makes a second Sammelbeleg.

        Returns the receipts issued (``[]``: nothing waited), or ``None`` when the unit
        still cannot sign or be asked (everything keeps waiting).
        """
        issued: list[ReceiptResult] = []
        try:
            start = waiting_in(self._service.db, register_id, "start")
            if start is not None:
                issued.append(self._issue_waiting_start(start))
            remedy = self._adopt_or_list(register_id)
            if remedy or self._service.outages.is_open(register_id):
                issued.extend(self._close_outage(register_id, remedy))
            with self._service.db.read_connection() as conn:
                waiting = waiting_rows(conn, register_id)
            for row in waiting:
                if row["kind"] == "closing":
                    issued.append(self._issue_waiting_closing(row))
                elif row["kind"] != "start":
                    issued.append(self._issue_waiting(row))
        except (FiscalError, SigningError) as exc:
            self._recovery_failed(register_id, exc)
            return None
        return issued

    def _recovery_failed(self, register_id: str, exc: Exception) -> None:
        """Journal and log why the unit answered but recovery failed (once per reason per
        outage, see :meth:`OutageBook.recovery_failed`); the status shows the last one."""
        with self._service._transaction() as conn:
            self._service.outages.recovery_failed(
                conn, register_id, str(exc), self._service.clock.now()
            )

    def _issue_waiting_start(self, row: sqlite3.Row) -> ReceiptResult:
        """The waiting Startbeleg; one whose answer was lost is sent again unchanged."""
        setup = setup_from_json(row["setup"])
        stamp = json.loads(row["setup"]).get("issued_at") or self._service._stamp_now(
            setup.timezone
        )
        with self._service._transaction() as conn:
            result = self._service._start_in(conn, setup, stamp)
            if result is not None:
                waiting_done(conn, row, result.number, self._now())
        if result is None:
            raise WaitsForUnit(START_SENT.format(register=setup.register_id))
        return result

    def _issue_waiting_closing(self, row: sqlite3.Row) -> ReceiptResult:
        """The Schlussbeleg a chain service may hold, sent again unchanged: its PUT is
        idempotent, so the service answers with what it holds or signs it now."""
        register_id = row["register_id"]
        lost = intended(json.loads(row["setup"]))
        data = lost.jws.rsplit(".", 1)[0].encode("ascii")
        signature = sign_verified(
            self._service.unit_of(register_id), data, timeout=self._service.sign_timeout
        )
        payload = split_jws(lost.jws)[0]
        draft = Draft(register_id, "closing")
        stored, document = stored_receipt(
            draft, lost.number, payload, data, lost.unit_id, lost.turnover, signature, "signed"
        )
        with self._service._transaction() as conn:
            self._service._store(conn, stored, document, self._service.clock.now())
            waiting_done(conn, row, stored.number, self._now())
        return result_from_parts(
            register_id,
            stored.number,
            "closing",
            "signed",
            payload,
            signature,
            stored.jws,
            document,
        )

    def _issue_waiting(self, row: sqlite3.Row) -> ReceiptResult:
        with self._service._transaction() as conn:
            reg = open_register(conn, row["register_id"])
            draft = Draft(row["register_id"], row["kind"], period=row["period"])
            result = self._service._issue_in(conn, reg, draft)
            if result.signature_state == "signed":
                waiting_done(conn, row, result.number, self._now())
        raise_if_lost(result)
        return result

    def _adopt_or_list(self, register_id: str) -> list[sqlite3.Row]:
        """Ask the chain service about each unsigned receipt; adopt those it signed.

        Returns the receipts it does not have (they are reissued).
        """
        with self._service.db.read_connection() as conn:
            rows = unresolved(conn, register_id)
        missing = []
        for row in rows:
            unit = self._service.unit_of(register_id)
            lookup = getattr(unit, "lookup", None)
            data = row["jws"].rsplit(".", 1)[0].encode("ascii")
            deadline = time.monotonic() + self._service.sign_timeout  # units run on real time
            signature = None if lookup is None else lookup(data, deadline=deadline)
            if signature is None or not verify_rs(unit.identity.public_key(), data, signature):
                missing.append(row)
                continue
            signed = jws_compact(data, signature)
            with self._service._transaction() as conn:
                resolve(conn, row, "adopted", self._now(), signed_jws=signed)
        return missing

    def _close_outage(self, register_id: str, remedy: list[sqlite3.Row]) -> list[ReceiptResult]:
        """Nullbeleg, Sammelbeleg and reissued sales in one transaction.

        A lost Sammel-/Jahresbeleg in ``remedy`` is not reissued here: the Sammelbeleg
        issued now (the outage is still open) or the waiting Jahresbeleg supersedes it.
        A sale the POS voided is resolved, not reissued (no Nullbeleg if none is left).
        When an answer is lost on the way (a receipt comes back ``unsigned``), what was
        issued is committed (each number stays with its receipt, the reissued sale it
        belongs to included) and the rest waits: :class:`WaitsForUnit` after the commit.
        """
        issued: list[ReceiptResult] = []
        with self._service._transaction() as conn:
            rest = [r for r in remedy if r["kind"] not in MUST_SIGN]
            sales = resolve_voided(conn, rest, self._now())

            def add(draft: Draft) -> ReceiptResult:
                reg = open_register(conn, register_id)
                issued.append(self._service._issue_in(conn, reg, draft))
                return issued[-1]

            if sales:  # the Nullbeleg first: proof the unit signs again
                add(Draft(register_id, "null", force_sign=True))
            if not any_lost(issued) and self._service.outages.is_open(register_id):
                add(Draft(register_id, "sammelbeleg"))
            for old, left in sales:  # left: the remedy's Storno a dead process left
                if any_lost(issued):
                    break
                voided_by = left
                if old["kind"] in COUNTED and voided_by is None:  # a Storno takes it back
                    voided_by = add(void_draft(old)).number  # (rksv.md 3)
                new = add(dataclasses.replace(reissue_draft(conn, old), voided_by=voided_by))
                resolve(
                    conn,
                    old,
                    "superseded",
                    self._now(),
                    replacement=new.number,
                    voided_by=voided_by,
                )
        for result in issued:
            raise_if_lost(result, always=True)
        return issued

    def _interrupted(self, conn: sqlite3.Connection, row: sqlite3.Row) -> None:
        """Store the signing of intent ``row``, unless it is void or waits already."""
        intent = json.loads(row["intent"])
        if "void" in intent:
            return
        waits = "setup" in intent or row["kind"] == "closing"  # sent again unchanged
        if "setup" in intent:
            setup = canonical_json(intent["setup"])
            if not start_waits(conn, row["register_id"], setup, _START_INTERRUPTED, self._now()):
                return  # it waits already (its answer was lost, or an earlier start)
        elif row["kind"] == "closing":
            if not self._closing_waits(conn, intent):
                return
        else:
            self._store_lost(conn, intent)
        facts = {"number": row["number"], "kind": row["kind"], "intent": row["id"]}
        now = self._now()
        append_event(
            conn, kind="signing.interrupted", register_id=row["register_id"], at=now, data=facts
        )
        _log.warning(
            "register %s: the %s receipt %d was being signed by the chain service when"
            " the process ended (or its transaction failed); %s",
            row["register_id"],
            row["kind"],
            row["number"],
            "it waits and is sent again unchanged"
            if waits
            else "stored unsigned until the service answers",
        )

    def _store_lost(self, conn: sqlite3.Connection, intent: dict[str, Any]) -> None:
        """Store an intent's receipt ``unsigned``, with all its lost answer would have done."""
        stored = intended(intent)
        register_id, number = stored.register_id, stored.number
        self._check_follows(conn, stored)
        at = self._service.clock.now()
        cause = f"the process ended while the chain service signed receipt {number}"
        self._service.outages.not_signed(conn, register_id, stored.unit_id, cause, number, at)
        document = json.loads(stored.document)
        self._service._store(conn, stored, document, at)
        if "reissue_of" in document:  # as _close_outage does after a lost reissue
            old = receipt_row(conn, register_id, document["reissue_of"])
            assert old is not None  # the original precedes its reissue in the same register
            resolve(
                conn,
                old,
                "superseded",
                at.isoformat(),
                replacement=number,
                voided_by=intent["voided_by"],
            )

    def _check_follows(self, conn: sqlite3.Connection, stored: Stored) -> None:
        """An interrupted receipt's number is the register's next (nothing came after it)."""
        if register_row(conn, stored.register_id)["last_number"] != stored.number - 1:
            raise FiscalError(
                f"register {stored.register_id}: the signing intent of receipt"
                f" {stored.number} does not follow the register's last receipt; the till"
                " database is inconsistent"
            )

    def _closing_waits(self, conn: sqlite3.Connection, intent: dict[str, Any]) -> bool:
        """The register waits for a Schlussbeleg the chain service may hold: closed to
        sales, it is sent again unchanged by recovery (:meth:`_issue_waiting_closing`).
        ``False``: it waits already."""
        stored = intended(intent)
        if open_waiting(conn, stored.register_id, "closing", None) is not None:
            return False
        self._check_follows(conn, stored)
        reason = CLOSING_SENT.format(register=stored.register_id)
        setup = canonical_json(intent)
        record_waiting(conn, stored.register_id, "closing", None, reason, self._now(), setup)
        conn.execute("UPDATE registers SET state = 'closed' WHERE id = ?", (stored.register_id,))
        return True


# intents whose receipt is missing, the last one per receipt number (a void one included).
# Numbers are gap-free and last_number moves with each receipt stored, so only an intent
# past its register's last number, or a Startbeleg's of a register not created, can lack
# its receipt: both parts seek an index (0006), and a start costs the same after a million
# intents as after ten (CROSS JOIN keeps the few registers the outer loop).
_INTERRUPTED = (
    "SELECT p.* FROM registers g CROSS JOIN pending_signings p"
    " ON p.register_id = g.id AND p.number > g.last_number"
    " WHERE p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
    " UNION ALL SELECT p.* FROM pending_signings p WHERE p.kind = 'start'"
    " AND NOT EXISTS (SELECT 1 FROM registers g WHERE g.id = p.register_id)"
    " AND p.id = (SELECT MAX(q.id) FROM pending_signings q"
    " WHERE q.register_id = p.register_id AND q.number = p.number)"
    " ORDER BY id"
)
_START_INTERRUPTED = (
    "its Startbeleg was sent to the chain service when the till process ended; it waits and"
    " is sent again unchanged as soon as the service answers (till-agent outage recover)"
)

"""Recovery: everything that waited for a signature unit, once it answers again.

- the remedy of unsigned receipts (DESIGN.md invariant 5): those the chain service holds
  are adopted, the others get a signed Nullbeleg, the Sammelbeleg that closes the outage
  and a reissue each (:mod:`agent.remedy` resolves them);
- the special receipts waiting for their unit (:mod:`agent.waiting`).

Both include what a process left unfinished while a chain service signed: the next write
transaction stores it, unsigned or waiting (:mod:`agent.interrupted`).

:class:`Recovery` decides what to issue; :class:`agent.issuing.Issuing` numbers, signs
and stores it, in its own transactions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from agent.at_rksv import jws_compact, split_jws
from agent.errors import FiscalError, SigningError, WaitsForUnit
from agent.receipt_records import (
    COUNTED,
    MUST_SIGN,
    Draft,
    any_lost,
    intended,
    raise_if_lost,
    stored_receipt,
)
from agent.receipt_view import result_from_parts
from agent.registers import START_SENT, open_register, setup_from_json
from agent.remedy import (
    REISSUED,
    reissue_draft,
    resolve,
    resolve_voided,
    unresolved,
    void_draft,
)
from agent.signing import sign_verified, verify_rs
from agent.waiting import waiting_done, waiting_in, waiting_rows

if TYPE_CHECKING:
    from agent.contract import ReceiptResult
    from agent.issuing import Issuing

__all__ = ["Recovery"]

_log = logging.getLogger(__name__)

# a receipt of the register has this request_id already
_TAKEN = "SELECT 1 FROM receipts WHERE register_id = ? AND request_id = ?"


class Recovery:
    """Recovers the registers of one till database once their unit answers
    (:meth:`recover`), issuing through ``issuing`` (its write transactions and durable
    path)."""

    def __init__(self, issuing: Issuing) -> None:
        self._issuing = issuing
        self._remedy_lock = threading.Lock()  # one remedy at a time (see remedy)

    def _now(self) -> str:
        return self._issuing.clock.now().isoformat()

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
            start = waiting_in(self._issuing.db, register_id, "start")
            if start is not None and not self._settle_stale_start(start):
                issued.append(self._issue_waiting_start(start))
            remedied = self.remedy(register_id)
            issued.extend(remedied)
            for result in remedied:  # a lost one: what it was for waits (the next run)
                raise_if_lost(result, always=True)
            with self._issuing.db.read_connection() as conn:
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

    def remedy(self, register_id: str, request_id: str | None = None) -> list[ReceiptResult]:
        """The remedy of ``register_id``'s unsigned receipts and the Sammelbeleg of its open
        outage, as :meth:`recover` issues them (its second and third step): the unsigned
        receipts the chain service has are adopted; then in one transaction the signed
        Nullbeleg (if a sale must be reissued), the Sammelbeleg (if the outage is open) and
        the reissued sales. ``[]``: nothing to do.

        ``request_id``: a zero receipt's idempotency key (:meth:`ReceiptService.zero_receipt`),
        stored with the first receipt issued for that request: the Nullbeleg, or the
        Sammelbeleg when no sale is reissued (on neither when the key names a receipt
        already), so that a retry finds it whatever came back ``unsigned``.
        One run at a time: the probe's recovery and a zero receipt of the local API would
        otherwise both find the same unsigned receipts and reissue them twice.

        A receipt that comes back ``unsigned`` is committed with what came before it, and
        it is returned as it is: the caller decides what waits (:meth:`recover` raises
        :class:`WaitsForUnit`).

        Raises:
            SigningError: the chain service cannot be asked about an unsigned receipt.
            WaitsForUnit: a receipt must be signed and cannot be now (nothing issued).
        """
        with self._remedy_lock:
            remedy = self._adopt_or_list(register_id)
            if not remedy and not self._issuing.outages.is_open(register_id):
                return []
            return self._close_outage(register_id, remedy, request_id)

    def _recovery_failed(self, register_id: str, exc: Exception) -> None:
        """Journal and log why the unit answered but recovery failed (once per reason per
        outage, see :meth:`OutageBook.recovery_failed`); the status shows the last one."""
        with self._issuing.transaction() as conn:
            self._issuing.outages.recovery_failed(
                conn, register_id, str(exc), self._issuing.clock.now()
            )

    def _settle_stale_start(self, row: sqlite3.Row) -> bool:
        """A waiting Startbeleg whose register exists (created by hand meanwhile, by a
        version that left the row open) is done with the register's Startbeleg; whether
        it was."""
        with self._issuing.transaction() as conn:
            first = conn.execute(
                "SELECT min(number) FROM receipts WHERE register_id = ? AND kind = 'start'",
                (row["register_id"],),
            ).fetchone()[0]
            if first is None:
                return False
            waiting_done(conn, row, int(first), self._now())
        _log.warning(
            "register %s: the Startbeleg waiting since %s is done: the register was"
            " initialized meanwhile with Startbeleg %d",
            row["register_id"],
            row["requested_at"],
            first,
        )
        return True

    def _issue_waiting_start(self, row: sqlite3.Row) -> ReceiptResult:
        """The waiting Startbeleg; one whose answer was lost is sent again unchanged."""
        setup, sent = setup_from_json(row["setup"]), json.loads(row["setup"])
        stamp = sent.get("issued_at") or self._issuing.stamp_now(setup.timezone)
        with self._issuing.transaction() as conn:
            result = self._issuing.start_in(
                conn,
                setup,
                stamp,
                receipt_id=sent.get("receipt_id"),
                unit_position=sent.get("unit_position"),
                # dated when it was first sent: the months from then on are its to close
                created_at=row["requested_at"] if sent.get("issued_at") else None,
            )
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
            self._issuing.unit_of(register_id), data, timeout=self._issuing.sign_timeout
        )
        payload = split_jws(lost.jws)[0]
        draft = Draft(register_id, "closing")
        stored, document = stored_receipt(
            draft, lost.number, payload, data, lost.unit_id, lost.turnover, signature, "signed"
        )
        with self._issuing.transaction() as conn:
            self._issuing.store(conn, stored, document, self._issuing.clock.now())
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
        with self._issuing.transaction() as conn:
            reg = open_register(conn, row["register_id"])
            draft = Draft(row["register_id"], row["kind"], period=row["period"])
            result = self._issuing.issue_in(conn, reg, draft)
            if result.signature_state == "signed":
                waiting_done(conn, row, result.number, self._now())
        raise_if_lost(result)
        return result

    def _adopt_or_list(self, register_id: str) -> list[sqlite3.Row]:
        """Ask the chain service about each unsigned receipt; adopt those it signed.

        Returns the receipts it does not have (they are reissued).
        """
        with self._issuing.db.read_connection() as conn:
            rows = unresolved(conn, register_id)
        missing = []
        for row in rows:
            unit = self._issuing.unit_of(register_id)
            lookup = getattr(unit, "lookup", None)
            data = row["jws"].rsplit(".", 1)[0].encode("ascii")
            deadline = time.monotonic() + self._issuing.sign_timeout  # units run on real time
            signature = None if lookup is None else lookup(data, deadline=deadline)
            if signature is None or not verify_rs(unit.identity.public_key(), data, signature):
                missing.append(row)
                continue
            signed = jws_compact(data, signature)
            # An adopted Jahresbeleg still waits: the DEP keeps the marker JWS the chain
            # went on from, so the year needs a Jahresbeleg signed in the DEP (rksv.md 6).
            with self._issuing.transaction() as conn:
                resolve(conn, row, "adopted", self._now(), signed_jws=signed)
        return missing

    def _close_outage(
        self, register_id: str, remedy: list[sqlite3.Row], request_id: str | None
    ) -> list[ReceiptResult]:
        """Nullbeleg, Sammelbeleg and reissued sales in one transaction (``request_id``: see
        :meth:`remedy`).

        Only sales are reissued. A lost Sammel-/Jahresbeleg in ``remedy`` is superseded by
        the Sammelbeleg issued now (the outage is still open) or the waiting Jahresbeleg;
        a lost Monats-/Nullbeleg may carry the failure marker (rksv.md 5), so it stands,
        resolved here without a reissue (a Monatsbeleg keeps its month).
        A sale the POS voided is resolved, not reissued (no Nullbeleg if none is left).
        When an answer is lost on the way (a receipt comes back ``unsigned``), what was
        issued is committed (each number stays with its receipt, the reissued sale it
        belongs to included) and the rest waits for the next remedy: nothing more is
        signed inside the outage that loss opened (a lost Storno is found again by
        :func:`agent.remedy.remedy_storno`).
        """
        issued: list[ReceiptResult] = []
        with self._issuing.transaction() as conn:
            for row in remedy:
                if row["kind"] not in REISSUED and row["kind"] not in MUST_SIGN:
                    resolve(conn, row, "superseded", self._now(), kept=True)
            rest = [r for r in remedy if r["kind"] in REISSUED]
            sales = resolve_voided(conn, rest, self._now())

            def add(draft: Draft) -> ReceiptResult:
                reg = open_register(conn, register_id)
                issued.append(self._issuing.issue_in(conn, reg, draft))
                return issued[-1]

            if (
                request_id is not None
                and conn.execute(_TAKEN, (register_id, request_id)).fetchone()
            ):
                request_id = None  # taken meanwhile: a retry of that request finds its receipt
            if sales:  # the Nullbeleg first: proof the unit signs again
                add(Draft(register_id, "null", force_sign=True, request_id=request_id))
                request_id = None  # a retry finds the request's Sammelbeleg through it
            if not any_lost(issued) and self._issuing.outages.is_open(register_id):
                add(Draft(register_id, "sammelbeleg", request_id=request_id))
            for old, left in sales:  # left: the remedy's Storno a dead process left
                if any_lost(issued):
                    break
                voided_by = left
                if old["kind"] in COUNTED and voided_by is None:  # a Storno takes it back
                    voided_by = add(void_draft(old)).number  # (rksv.md 3)
                    if any_lost(issued):  # the next remedy finds it (remedy_storno)
                        break
                new = add(dataclasses.replace(reissue_draft(conn, old), voided_by=voided_by))
                resolve(
                    conn,
                    old,
                    "superseded",
                    self._now(),
                    replacement=new.number,
                    voided_by=voided_by,
                )
        return issued

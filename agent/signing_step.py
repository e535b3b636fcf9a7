"""The signing step of the durable path: sign, fall back or refuse, and a chain signing's intent.

:meth:`agent.issuing.Issuing.issue_in` calls :meth:`SigningStep.sign` between numbering a
receipt and storing it (DESIGN.md invariant 1). A local unit signs in-process. A chain
service keeps what it signs, so the signing is first committed as an intent (with what the
transaction wrote before it): a process that dies while the service signs leaves it for
:func:`agent.interrupted.store_interrupted`, and a service that answers that it signed
nothing makes it void.
"""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
from collections.abc import Callable
from typing import Any, NoReturn

from agent.at_rksv import FALLBACK_SIGNATURE
from agent.clock import Clock
from agent.errors import OutcomeUnknown, SigningError, UnitUnavailable, WaitsForUnit
from agent.metrics import ReceiptCounts
from agent.outages import OutageBook
from agent.receipt_records import MUST_SIGN, Draft, Stored
from agent.registers import CLOSING_SENT, FAILED_OK_HINT
from agent.signing import SignatureUnit, sign_verified
from storage.journal import canonical_json
from storage.writer import WriteConnection

__all__ = ["Intent", "SigningStep", "start_intent"]

# a chain signing's intent: called with None before the request leaves (commit it), and
# with the refusal when the service answered that it signed nothing (void it)
Intent = Callable[[SigningError | None], None]


class SigningStep:
    """Signs the receipts of the write transactions on ``writer``, and commits their intents.

    Args:
        writer: the write connection; an intent commits its transaction so far.
        outages: the outage book: its breaker, and the outage a failed signing opens.
        issued: the receipt counts of ``GET /metrics``; an intent's commit counts the
            receipts the transaction stored before it.
        clock: wall time of intents and outages.
        sign_timeout: the deadline of every signing call, in seconds.
    """

    def __init__(
        self,
        writer: WriteConnection,
        outages: OutageBook,
        issued: ReceiptCounts,
        clock: Clock,
        sign_timeout: float,
    ) -> None:
        self._writer = writer
        self._outages = outages
        self._issued = issued
        self._clock = clock
        self._sign_timeout = sign_timeout
        # an intent committed by a transaction that has not committed itself: the next
        # one stores it first (and at start: one left by a process that died)
        self.intent_unsettled = True
        # the outage a refused receipt met: its transaction rolls back, so the next one
        # opens it (at once, see Issuing.transaction): (register, unit, cause, at)
        self.refused_outage: tuple[str, str, str, dt.datetime] | None = None

    def sign(  # noqa: PLR0917 - the receipt being signed, in the order it is made
        self,
        conn: sqlite3.Connection,
        unit: SignatureUnit,
        data: bytes,
        draft: Draft,
        number: int,
        now: dt.datetime,
        intent: Intent | None,
    ) -> tuple[bytes, str]:
        """Sign ``data`` (receipt ``number`` of ``draft``): the signature and its state, or
        the fallback marker; :class:`WaitsForUnit` for a receipt that must be signed."""
        register_id, kind = draft.register_id, draft.kind
        must_sign = kind in MUST_SIGN or draft.force_sign
        is_open = self._outages.is_open(register_id)
        if is_open and kind != "sammelbeleg" and not draft.force_sign:
            # the breaker is open: no call to the unit, the probe finds out when it is back
            if must_sign:
                raise WaitsForUnit(f"a {kind} receipt must be signed: it waits for the unit")
            self._outages.affected(conn, register_id, number, now)
            return FALLBACK_SIGNATURE, "fallback"
        unit_id = unit.identity.unit_id
        # (a scenario replay's unit_position names the unit of each receipt and whether it
        # works: it is asked as told)
        shared = not is_open and draft.unit_position is None
        down = self._outages.unit_down(unit_id) if shared else None
        if down is not None and kind not in ("sammelbeleg", "start") and not draft.force_sign:
            # the unit failed for another register and has not signed since: this register
            # meets the same failure without waiting for it (its own outage opens)
            why = f"unit {unit_id} failed and has not signed since (not asked): {down}"
            return self._not_signed(conn, unit_id, draft, number, UnitUnavailable(why), None)
        if intent is not None:
            intent(None)  # durable before the request leaves: the service keeps what it signs
        try:
            signature = sign_verified(unit, data, timeout=self._sign_timeout)
        except SigningError as exc:
            return self._not_signed(conn, unit_id, draft, number, exc, intent, is_open=is_open)
        if is_open or down is not None:  # it signs again: for the other registers on it too
            self._outages.unit_signed(unit_id)
        return signature, "signed"

    def _not_signed(  # noqa: PLR0917 - the receipt being signed, in the order it is made
        self,
        conn: sqlite3.Connection,
        unit_id: str,
        draft: Draft,
        number: int,
        exc: SigningError,
        intent: Intent | None,
        *,
        is_open: bool = False,
    ) -> tuple[bytes, str]:
        """The unit did not sign receipt ``number`` (``exc``): its fallback marker and state,
        or the refusal of a receipt that must be signed."""
        register_id, kind = draft.register_id, draft.kind
        must_sign = kind in MUST_SIGN or draft.force_sign
        unknown = isinstance(exc, OutcomeUnknown)
        # a Schlussbeleg's outage could never be closed (the register ends in it): it
        # waits unless the operator accepts the marker (``failed_ok``, rksv.md 5: it may
        # carry it); one whose outcome is unknown may be held signed, and waits anyway
        closing_waits = kind == "closing" and (unknown or not draft.failed_ok)
        if closing_waits or (must_sign and (kind == "start" or not unknown)):
            # a Schlussbeleg's outage could never be closed, a Startbeleg's register
            # does not exist: their wait (or refusal) is the record
            if kind not in ("start", "closing") and not is_open:
                self.refused_outage = (register_id, unit_id, str(exc), self._clock.now())
            _refuse(draft, exc, intent)
        # an unknown outcome (a chain service that may hold a signature) is `unsigned`:
        # it chains like a fallback receipt and is remedied when the service answers.
        # A receipt that must be signed, too: rolling it back would give its number,
        # which the service may hold signed, to the next receipt. Its obligation stays
        # open (the outage, a waiting Jahresbeleg, the rest of a remedy).
        state = "unsigned" if unknown else "fallback"
        if kind == "closing" and intent is not None and not unknown:
            # (``failed_ok``) the service signed nothing: void its intent, committed, as a
            # refusal does, so a transaction that fails from here on leaves no Schlussbeleg
            # waiting for a service that may never answer again
            intent(exc)
        at = self._clock.now()
        self._outages.not_signed(
            conn, register_id, unit_id, str(exc), number, at, unit_at_fault=True
        )
        return FALLBACK_SIGNATURE, state

    def open_refused_outage(self, conn: sqlite3.Connection) -> None:
        """Open the outage a refused receipt met (unless one is open by now), in ``conn``.
        It stays pending until that transaction commits (:class:`agent.issuing.Issuing`
        clears it then): a transaction that fails for another reason opens it again."""
        refused = self.refused_outage
        if refused is None or self._outages.is_open(refused[0]):
            return
        register_id, unit_id, cause, at = refused
        self._outages.open(
            conn, register_id=register_id, unit_id=unit_id, cause=cause, number=None, at=at
        )

    def receipt_intent(
        self,
        conn: sqlite3.Connection,
        draft: Draft,
        number: int,
        parts: Callable[[bytes, str], tuple[Stored, dict[str, Any]]],
    ) -> Intent:
        """A receipt's :data:`Intent`: before it is sent, record it as the ``unsigned`` one a
        lost answer would leave (``parts``: the receipt, given its signature and state) and
        commit it, with all the transaction holds so far."""
        return functools.partial(self._receipt_intent, conn, draft, number, parts)

    def _receipt_intent(
        self,
        conn: sqlite3.Connection,
        draft: Draft,
        number: int,
        parts: Callable[[bytes, str], tuple[Stored, dict[str, Any]]],
        refused: SigningError | None,
    ) -> None:
        if refused is not None:
            self.void_intent(conn, draft.register_id, number, refused)
            return
        stored, _ = parts(FALLBACK_SIGNATURE, "unsigned")
        intent = {"receipt": stored._asdict(), "voided_by": draft.voided_by}
        self.record_intent(conn, stored.register_id, stored.number, draft.kind, intent)

    def record_intent(
        self,
        conn: sqlite3.Connection,
        register_id: str,
        number: int,
        kind: str,
        intent: dict[str, Any],
    ) -> None:
        """Commit (fsync) a signing intent and what the transaction wrote before it: a
        process that dies from here on leaves the intent for
        :func:`agent.interrupted.store_interrupted`.

        The transaction goes on: a group commit's earlier sales and a remedy's earlier
        receipts are committed now, each complete.
        """
        conn.execute(
            "INSERT INTO pending_signings (register_id, number, kind, intent, at)"
            " VALUES (?, ?, ?, ?, ?)",
            (register_id, number, kind, canonical_json(intent), self._clock.now().isoformat()),
        )
        self._writer.commit_so_far()
        # what is committed now stays, whatever becomes of the transaction
        self._outages.settle(committed=True)
        self._issued.settle(committed=True)
        self.intent_unsettled = True  # until the transaction commits

    def void_intent(
        self, conn: sqlite3.Connection, register_id: str, number: int, exc: Exception
    ) -> None:
        """The service answered that it signed nothing: the intent before is void (the
        receipt is not stored, so its number is free)."""
        self.record_intent(conn, register_id, number, "void", {"void": str(exc)})


def start_intent(voids: list[SigningError]) -> Intent:
    """The Startbeleg's :data:`Intent`: :meth:`agent.issuing.Issuing.start_in` committed
    it already, and records a refusal (collected in ``voids``) itself once the register it
    created is undone."""
    return functools.partial(_collect_refusal, voids)


def _collect_refusal(voids: list[SigningError], refused: SigningError | None) -> None:
    if refused is not None:
        voids.append(refused)


def _refuse(draft: Draft, exc: SigningError, intent: Intent | None) -> NoReturn:
    """The receipt is not stored: it must be signed, and a Schlussbeleg only signed (no
    Sammelbeleg could follow it) unless the operator accepts the failure marker
    (``Draft.failed_ok``; the refusal says how). A chain service that answered signed nothing: its
    intent is void. One whose answer was lost may hold the receipt: its intent stands,
    and the Startbeleg or Schlussbeleg waits to be sent again unchanged
    (:meth:`agent.issuing.Issuing.start_in`; :func:`agent.interrupted.store_interrupted`
    once this transaction has rolled back)."""
    lost = intent is not None and isinstance(exc, OutcomeUnknown)
    if intent is not None and not lost:
        intent(exc)
    if draft.kind != "closing":
        raise WaitsForUnit(
            f"a {draft.kind} receipt must be validly signed and the unit failed: {exc}"
        ) from exc
    if lost:
        raise WaitsForUnit(CLOSING_SENT.format(register=draft.register_id)) from exc
    raise WaitsForUnit(
        f"the unit failed ({exc}): a Schlussbeleg is issued only when it signs,"
        " since no Sammelbeleg could follow it; nothing was issued; "
        + FAILED_OK_HINT.format(register=draft.register_id)
    ) from exc

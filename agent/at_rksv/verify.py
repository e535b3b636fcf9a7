"""Our own verifier for DEP7 exports (reference/rksv.md sections 1-7).

:func:`verify_dep` walks the receipts of a DEP in order, keeping only the running
state (previous JWS, date, turnover counter, outage state, used Belegnummern), and
returns a :class:`Report`. Every :class:`Finding` names the receipt (its Belegnummer,
or the start of the JWS when that cannot be read; ``None`` for the DEP as a whole,
:data:`CONTAINER` for the crypto container) and one of these rules:

==============================  ==========================================================
rule                            broken when
==============================  ==========================================================
``malformed-dep``               the DEP cannot be read, is not JSON, lacks a key or is not
                                base64
``dep-empty``                   the DEP holds no receipt: nothing was verified
``malformed-container``         the crypto container cannot be read, is not JSON, lacks a
                                key, or an entry is not base64, DER or an EC key (at
                                :data:`CONTAINER`)
``malformed-receipt``           JWS segments, padding, base64url, payload fields, amount,
                                date, counter or chaining value formats
``algorithm-mismatch``          the JWS header is not exactly ``{"alg":"ES256"}``
``algorithm-unknown``           a suite other than ``R1``
``certificate-provider-invalid``  ``AT0`` with a certificate serial, or a ZDA with a key id
``certificate-serial-invalid``  field 11 is neither hex/decimal nor ``Ordnungsbegriff-KeyID``
``certificate-serial-mismatch`` field 11 differs from the serial of the group certificate
``certificate-missing``         several groups, and one has no ``Signaturzertifikat``
``certificate-serial-collision``  a group certificate has a container serial but differs
``certificate-chain-broken``    a certificate is not signed by the next in the chain
``certificate-untrusted``       the chain does not reach a container certificate
``public-key-missing``          no container key for the serial of a signed receipt
``signature-invalid``           the ES256 signature does not verify
``chaining-invalid``            Sig-Voriger-Beleg is not SHA-256(previous JWS)[:8]
``turnover-counter-invalid``    the decrypted counter is not the running total
``receipt-id-duplicate``        a Belegnummer occurs twice
``date-decreasing``             a receipt is dated before its predecessor
``register-id-changed``         the Kassen-ID differs from the first receipt's
``system-type-changed``         open and closed (AT0) receipts are mixed
``start-receipt-chaining``      the first receipt is not chained over the Kassen-ID: a
                                broken Startbeleg, or a part of a DEP (see ``partial``)
``start-receipt-unsigned``      the Startbeleg carries the failure marker
``start-receipt-type``          the Startbeleg is a Storno or Training receipt
``start-receipt-turnover``      the Startbeleg has a non-zero amount
``sammelbeleg-missing``         after an outage, no signed zero receipt (not STO/TRA)
                                directly after the failed run or the first re-signed one
==============================  ==========================================================

A failed outage run at the very end of a DEP is accepted: the export may be cut there.

Receipts with the failure marker are no finding either (rksv.md 5), but the report counts
them (:attr:`Report.fallback_receipts`, of them zero receipts
:attr:`Report.fallback_zero_receipts`, which the BMF Prüftool reports as negative with a
hint), the outages they make (:attr:`Report.outages`: runs of them) and whether the DEP
ends inside one, before its Sammelbeleg (:attr:`Report.open_outage_from`), and
:attr:`Report.notes` says so (and, when its last receipt is a zero receipt with the marker,
that this may be the Schlussbeleg of a register decommissioned inside the outage: a DEP
has no receipt kinds to tell). Counts, not lists: memory stays bounded.

Without an AES key in the crypto container (ztp allows that) the turnover counter is not
checked: :attr:`Report.counter_checked` is false and :attr:`Report.notes` says why.

A part of a DEP (``export dep --from``) does not start with the Startbeleg. With
``partial=True`` its first receipt's chaining value and turnover counter are taken as
given, as ztp takes them from the previous part of a split DEP, and everything after it is
checked (:attr:`Report.partial`); a first receipt chained over the Kassen-ID is the
Startbeleg and is checked as one. Without it, such a DEP is one ``start-receipt-chaining``
finding that says so, and the other Startbeleg rules are not applied to that receipt.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.at_rksv._verify_rules import (
    KeyStore,
    Receipt,
    RuleBroken,
    certificate_key,
    check_certificates,
    load_certificate,
    parse_receipt,
    receipt_label,
    serial_numbers,
)
from agent.at_rksv.counter import decrypt_counter
from agent.at_rksv.dep import (
    CryptoContainer,
    DepFormatError,
    DepGroup,
    iter_dep,
    load_container,
    read_container,
    stream_dep,
)
from agent.at_rksv.idset import ReceiptIdSet
from agent.at_rksv.payload import chain_value
from agent.signing.base import verify_rs

__all__ = ["CONTAINER", "Finding", "Report", "verify_dep", "verify_files"]

MALFORMED_DEP = "malformed-dep"
MALFORMED_CONTAINER = "malformed-container"
DEP_EMPTY = "dep-empty"
CONTAINER = "(container)"  # where a container finding is: it concerns no receipt


@dataclass(frozen=True, slots=True)
class Finding:
    """One broken rule: where (Belegnummer, JWS start, ``None`` for the DEP as a whole,
    :data:`CONTAINER` for the crypto container), rule name and message."""

    receipt: str | None
    rule: str
    message: str


NO_AES_KEY = "turnover counter not checked: the crypto container holds no AES key"
NOT_STARTBELEG = (
    "the DEP does not start with the Startbeleg: {chain!r} is not chained over the"
    " Kassen-ID (a part of a DEP, as export dep --from writes, is verified with"
    " verify --partial)"
)
TAKEN_AS_GIVEN = (
    "a part of a DEP: its first receipt {receipt} is not the Startbeleg; its chaining value"
    " and turnover counter are taken as given"
)
FALLBACK_NOTE = (
    "{receipts} the failure marker 'Sicherheitseinrichtung ausgefallen' ({zero} of them zero"
    " receipts), in {outages}"
)
UNSIGNED_ZERO = "; the BMF Prüftool reports an unsigned zero receipt as negative, with a hint"
ENDS_IN_OUTAGE = (
    "the DEP ends inside an outage (the failure marker from receipt {first} on): its"
    " Sammelbeleg, the signed zero receipt that ends it, is not in it yet"
)

ENDS_DECOMMISSIONED = (
    ", unless its last receipt, a zero receipt with the marker, is the Schlussbeleg of a"
    " register decommissioned inside the outage (rksv.md 5: a Schlussbeleg may carry the"
    " marker, and no receipt follows it)"
)


@dataclass(frozen=True, slots=True)
class Report:
    """The result of a verification; ``ok`` when there is no finding.

    ``counter_checked`` is false when the turnover counter could not be checked (no AES
    key); ``partial`` is true when the first receipt was taken as given (a part of a
    DEP); ``notes`` says what was not checked, and why, and what is no finding but not to
    be missed: receipts with the failure marker and a DEP that ends inside an outage.
    ``fallback_receipts`` carry the failure marker, ``fallback_zero_receipts`` of them are
    zero receipts (all amounts 0, not Storno or Training), ``outages`` counts their runs,
    and ``open_outage_from`` is the Belegnummer that begins the run the DEP ends in, whose
    Sammelbeleg is not in it yet (``None``: the DEP does not end inside an outage).
    """

    findings: list[Finding] = field(default_factory=list)
    receipts: int = 0
    counter_checked: bool = True
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    fallback_receipts: int = 0
    fallback_zero_receipts: int = 0
    outages: int = 0
    open_outage_from: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_dep(
    dep: Mapping[str, Any] | Iterable[tuple[DepGroup, str]],
    container: Mapping[str, Any] | CryptoContainer,
    *,
    partial: bool = False,
) -> Report:
    """Verify a DEP export against a crypto material container.

    Args:
        dep: the parsed DEP JSON, or ``(group, jws)`` pairs as from
            :func:`~agent.at_rksv.dep.iter_dep` (streamed, never held in memory).
        container: the parsed container JSON (any JSON value: one that is not a
            container is a finding), or a :class:`CryptoContainer`.
        partial: the DEP may be a part: a first receipt that is not the Startbeleg is
            taken as given (its chaining value and turnover counter).
    """
    try:
        if not isinstance(container, CryptoContainer):
            container = read_container(container)
        walk = _Walk(KeyStore(container), container.aes_key, partial=partial)
    except DepFormatError as exc:
        return _broken_container(exc)
    walk.run(iter_dep(dep) if isinstance(dep, Mapping) else iter(dep))
    return walk.report()


def verify_files(
    dep_path: Path,
    container_path: Path,
    *,
    on_read: Callable[[int], None] | None = None,
    partial: bool = False,
) -> Report:
    """Verify the DEP export and crypto container stored in two JSON files.

    The DEP is read as a stream (:func:`~agent.at_rksv.dep.stream_dep`): memory stays
    bounded however many receipts it holds; ``on_read`` gets the size of each chunk read.
    A file that cannot be read (missing, a directory, an I/O error) is a finding, as a
    malformed one is. ``partial``: as for :func:`verify_dep`.
    """
    try:
        with container_path.open("rb") as container_file:
            container = load_container(container_file)
    except (OSError, DepFormatError) as exc:
        return _broken_container(exc)
    try:
        dep_file = dep_path.open("rb")
    except OSError as exc:
        return Report([Finding(None, MALFORMED_DEP, _unreadable("DEP export", exc))])
    with dep_file:
        return verify_dep(stream_dep(dep_file, on_read=on_read), container, partial=partial)


def _broken_container(exc: Exception) -> Report:
    message = _unreadable("crypto container", exc) if isinstance(exc, OSError) else str(exc)
    return Report([Finding(CONTAINER, MALFORMED_CONTAINER, message)], counter_checked=False)


def _unreadable(what: str, exc: OSError) -> str:
    return f"{what} cannot be read: {exc}"


class _Outage(enum.Enum):
    NONE = "none"
    FAILED = "failed"  # in a run of receipts carrying the failure marker
    RESIGNED = "resigned"  # one signed receipt after the run; the next must restore


@dataclass(slots=True)
class _Group:
    """The group the walk is in: its certificate and the key it implies."""

    source: DepGroup | None = None
    certificate: x509.Certificate | None = None
    key: ec.EllipticCurvePublicKey | None = None
    number: int = 0
    without_certificate: bool = False
    reported_missing: bool = False


class _Walk:
    """The state of one verification while the receipts go by."""

    def __init__(self, store: KeyStore, aes_key: bytes | None, *, partial: bool) -> None:
        self.store = store
        self.aes_key = aes_key
        self.partial = partial  # a first receipt that is not the Startbeleg is taken as given
        self.at_start = False  # the receipt in hand is the Startbeleg
        self.taken: str | None = None  # the Belegnummer of a first receipt taken as given
        self.findings: list[Finding] = []
        self.count = 0
        self.group = _Group()
        self.register_id: str | None = None
        self.closed: bool | None = None
        self.previous_jws: str | None = None
        self.previous_date: datetime | None = None
        self.counter: int | None = 0
        self.seen = ReceiptIdSet()
        self.outage = _Outage.NONE
        self.outage_from: str | None = None  # the first receipt of the run the walk is in
        self.outages = 0  # runs of receipts with the failure marker
        self.fallback = 0  # receipts with the failure marker
        self.fallback_zero = 0  # of them zero receipts (not Storno or Training)
        self.last_zero_failed = False  # the last receipt: a zero receipt with the marker

    def report(self) -> Report:
        notes = [] if self.aes_key is not None else [NO_AES_KEY]
        if self.taken is not None:
            notes.append(TAKEN_AS_GIVEN.format(receipt=self.taken))
        if self.fallback:
            notes.append(self.fallback_note())
        open_from = None if self.outage is _Outage.NONE else self.outage_from
        if open_from is not None:
            ends = ENDS_IN_OUTAGE.format(first=open_from)
            notes.append(ends + ENDS_DECOMMISSIONED if self.last_zero_failed else ends)
        return Report(
            self.findings,
            self.count,
            self.aes_key is not None,
            notes,
            partial=self.taken is not None,
            fallback_receipts=self.fallback,
            fallback_zero_receipts=self.fallback_zero,
            outages=self.outages,
            open_outage_from=open_from,
        )

    def fallback_note(self) -> str:
        receipts = "1 receipt carries" if self.fallback == 1 else f"{self.fallback} receipts carry"
        outages = "1 outage" if self.outages == 1 else f"{self.outages} outages"
        note = FALLBACK_NOTE.format(receipts=receipts, zero=self.fallback_zero, outages=outages)
        return note + UNSIGNED_ZERO if self.fallback_zero else note

    def fail(self, receipt: str | None, rule: str, message: str) -> None:
        self.findings.append(Finding(receipt, rule, message))

    def flag(self, r: Receipt, rule: str, message: str) -> None:
        self.fail(r.receipt_id, rule, message)

    def run(self, items: Iterator[tuple[DepGroup, str]]) -> None:
        try:
            for group, jws in items:
                self.visit(group, jws)
        except DepFormatError as exc:
            self.fail(None, MALFORMED_DEP, str(exc))
        except OSError as exc:  # reading a streamed DEP: the findings so far stand
            self.fail(None, MALFORMED_DEP, _unreadable("DEP export", exc))
        if not self.count and not self.findings:  # "valid" would pass a wrong file
            self.fail(None, DEP_EMPTY, "the DEP holds no receipt: nothing to verify")

    def visit(self, group: DepGroup, jws: str) -> None:
        if group is not self.group.source:
            self.enter_group(group, receipt_label(jws))
        self.count += 1
        try:
            receipt = parse_receipt(jws)
        except RuleBroken as exc:
            self.fail(receipt_label(jws), exc.rule, exc.message)
            self.counter = None  # its effect is unknown: take the next counter as is
        else:
            self.check(receipt)
        self.previous_jws = jws

    def check(self, receipt: Receipt) -> None:
        self.at_start = False
        if self.count == 1:
            self.check_first(receipt)
        self.check_identity(receipt)
        self.check_unique(receipt)
        self.check_date(receipt)
        self.check_chain(receipt)
        self.check_signature(receipt)
        self.check_start(receipt)
        self.check_counter(receipt)
        self.check_outage(receipt)

    # --- groups and certificates ---------------------------------------------------

    def enter_group(self, group: DepGroup, label: str) -> None:
        state = self.group
        self.group = _Group(source=group, number=state.number + 1)
        self.group.without_certificate = state.without_certificate
        self.group.reported_missing = state.reported_missing
        if group.certificate_der is None:
            self.group.without_certificate = True
        else:
            self.load_group_certificate(group, label)
        if self.group.number > 1 and self.group.without_certificate:
            self.report_missing_certificate(label)

    def load_group_certificate(self, group: DepGroup, label: str) -> None:
        where = f"group {self.group.number}"
        try:
            cert = load_certificate(group.certificate_der or b"", f"{where} certificate")
            chain = [load_certificate(der, f"{where} CA") for der in group.ca_certificates]
            key = certificate_key(cert, f"{where} certificate")
        except DepFormatError as exc:
            self.fail(label, MALFORMED_DEP, str(exc))
            return
        self.group.certificate, self.group.key = cert, key
        for rule, message in check_certificates(cert, chain, self.store):
            self.fail(label, rule, f"{where}: {message}")

    def report_missing_certificate(self, label: str) -> None:
        if not self.group.reported_missing:
            self.group.reported_missing = True
            self.fail(label, "certificate-missing", "several groups, not all with a certificate")

    # --- receipt rules ----------------------------------------------------------------

    def check_identity(self, r: Receipt) -> None:
        if self.register_id is None:
            self.register_id, self.closed = r.payload.register_id, r.closed
            return
        if r.payload.register_id != self.register_id:
            message = (
                f"Kassen-ID {r.payload.register_id!r}, the DEP began with {self.register_id!r}"
            )
            self.flag(r, "register-id-changed", message)
        if r.closed != self.closed:
            kind = "closed (AT0)" if r.closed else "open"
            self.flag(r, "system-type-changed", f"{kind} receipt after the other system type")

    def check_unique(self, r: Receipt) -> None:
        if not self.seen.add(r.receipt_id):
            self.flag(r, "receipt-id-duplicate", "Belegnummer already used")

    def check_date(self, r: Receipt) -> None:
        if self.previous_date is not None and r.issued_at < self.previous_date:
            self.flag(r, "date-decreasing", f"{r.payload.issued_at} is before its predecessor")
        self.previous_date = r.issued_at

    def check_first(self, r: Receipt) -> None:
        """The first receipt: the Startbeleg if chained over the Kassen-ID; if not, a part
        of a DEP (taken as given with ``partial``, else one finding that says so)."""
        if r.payload.chain == chain_value(None, r.payload.register_id):
            self.at_start = True
            return
        self.counter = None  # the total before it is in no receipt here: take it as it is
        if self.partial:
            self.taken = r.receipt_id
        else:
            self.flag(r, "start-receipt-chaining", NOT_STARTBELEG.format(chain=r.payload.chain))

    def check_chain(self, r: Receipt) -> None:
        if self.previous_jws is None:
            return  # the first receipt: check_first
        expected = chain_value(self.previous_jws, r.payload.register_id)
        if r.payload.chain != expected:
            self.flag(r, "chaining-invalid", f"{r.payload.chain!r} should be {expected!r}")

    def check_signature(self, r: Receipt) -> None:
        self.check_group_serial(r)
        if not r.signed:
            if self.at_start:
                self.flag(r, "start-receipt-unsigned", "the Startbeleg must be signed")
            return
        keys = self.keys_for(r)
        if not keys:
            self.flag(r, "public-key-missing", f"no container key for {r.payload.cert_serial!r}")
        elif not any(verify_rs(key, r.signing_input, r.signature) for key in keys):
            self.flag(r, "signature-invalid", "the ES256 signature does not verify")

    def keys_for(self, r: Receipt) -> list[ec.EllipticCurvePublicKey]:
        # a closed system's receipt names its key by its key id, which only the crypto
        # container resolves: a group certificate (closed systems have none) says nothing
        if self.group.key is not None and not r.closed:
            return [self.group.key]
        return self.store.keys_for(r.payload.cert_serial, r.closed)

    def check_group_serial(self, r: Receipt) -> None:
        cert = self.group.certificate
        if cert is None or r.closed:
            return
        if cert.serial_number not in serial_numbers(r.payload.cert_serial):
            message = (
                f"{r.payload.cert_serial!r} is not the group certificate {cert.serial_number:x}"
            )
            self.flag(r, "certificate-serial-mismatch", message)

    def check_start(self, r: Receipt) -> None:
        if not self.at_start:
            return
        if r.storno or r.training:
            self.flag(r, "start-receipt-type", "the Startbeleg is a Storno or Training receipt")
        if not r.zero:
            self.flag(r, "start-receipt-turnover", "the Startbeleg has amounts")

    def check_counter(self, r: Receipt) -> None:
        if self.aes_key is None:
            return
        turnover = 0 if r.training else sum(r.amounts)
        expected = None if self.counter is None else self.counter + turnover
        if r.counter_bytes is None:
            self.counter = expected
            return
        actual = decrypt_counter(
            self.aes_key, r.payload.register_id, r.receipt_id, r.payload.counter
        )
        if expected is not None and actual != expected:
            self.flag(r, "turnover-counter-invalid", f"counter is {actual}, not {expected} cents")
        self.counter = actual

    def check_outage(self, r: Receipt) -> None:
        zero = r.zero and not (r.storno or r.training)
        self.last_zero_failed = zero and not r.signed
        if not r.signed:
            self.fallback += 1
            self.fallback_zero += zero
        if r.signed and zero:
            self.outage = _Outage.NONE
            return
        if self.outage is _Outage.RESIGNED:
            self.flag(r, "sammelbeleg-missing", "no signed zero receipt after the outage")
            self.outage = _Outage.NONE
        if not r.signed:
            if self.outage is _Outage.NONE:  # a run of receipts with the marker begins
                self.outages += 1
                self.outage_from = r.receipt_id
            self.outage = _Outage.FAILED
        elif self.outage is _Outage.FAILED:
            self.outage = _Outage.RESIGNED

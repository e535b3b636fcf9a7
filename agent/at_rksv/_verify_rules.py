"""Building blocks of the DEP verifier: receipt parsing, key lookup, certificate chains.

:func:`parse_receipt` turns one compact JWS into a :class:`Receipt` or raises
:class:`RuleBroken` with the rule it breaks (reference/rksv.md sections 1 and 2).
:class:`KeyStore` indexes the crypto container: signing keys by receipt serial (exact
id, hex or decimal certificate serial) and the trusted certificates for
:func:`check_certificates`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.at_rksv.counter import (
    MAX_COUNTER_BYTES,
    MIN_COUNTER_BYTES,
    STORNO_MARKER,
    TRAINING_MARKER,
)
from agent.at_rksv.dep import CERTIFICATE, CryptoContainer, DepFormatError
from agent.at_rksv.encoding import AMOUNT_RE, amount_to_cents, b64_decode, b64url_decode
from agent.at_rksv.payload import JWS_HEADER, Payload, is_fallback
from agent.signing.config import ORDNUNGSBEGRIFF

__all__ = [
    "KeyStore",
    "Receipt",
    "RuleBroken",
    "certificate_key",
    "check_certificates",
    "load_certificate",
    "parse_receipt",
    "receipt_date_time",
    "receipt_label",
    "serial_numbers",
]

MALFORMED = "malformed-receipt"
_ALGORITHM_RE = re.compile(r"R[1-9]\d*")
_ZDA_RE = re.compile(r"(AT0|[A-Z]{2}[1-9]\d*)")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
# closed system field 11 (reference/rksv.md 1.3): Steuernummer, UID or GLN, then "-Key-ID";
# the key id is optional here as in ztp (its corpus expects no-public-key, not a bad serial)
_CLOSED_SERIAL_RE = re.compile(rf"({ORDNUNGSBEGRIFF})(-[^_]+)?")
_HEX_RE = re.compile(r"-?[0-9a-fA-F]+")
_DECIMAL_RE = re.compile(r"[0-9]+")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_AMOUNT_NAMES = (
    "Betrag-Satz-Normal",
    "Betrag-Satz-Ermaessigt-1",
    "Betrag-Satz-Ermaessigt-2",
    "Betrag-Satz-Null",
    "Betrag-Satz-Besonders",
)
_LABEL_PREFIX = 48


class RuleBroken(Exception):
    """A receipt breaks ``rule``; carries the message for the finding."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class Receipt:
    """A structurally valid receipt of the DEP."""

    jws: str
    payload: Payload
    signing_input: bytes
    signature: bytes
    issued_at: datetime
    amounts: tuple[int, int, int, int, int]
    counter_bytes: bytes | None  # None for the STO / TRA markers
    closed: bool

    @property
    def receipt_id(self) -> str:
        return self.payload.receipt_id

    @property
    def signed(self) -> bool:
        return not is_fallback(self.signature)

    @property
    def storno(self) -> bool:
        return self.payload.counter == STORNO_MARKER

    @property
    def training(self) -> bool:
        return self.payload.counter == TRAINING_MARKER

    @property
    def zero(self) -> bool:
        return not any(self.amounts)


def receipt_label(jws: str) -> str:
    """Belegnummer of ``jws`` if it can be read, else the start of the JWS."""
    segments = jws.split(".")
    try:
        receipt_id = Payload.parse(b64url_decode(segments[1]).decode("utf-8")).receipt_id
    except (IndexError, ValueError):
        receipt_id = ""
    if receipt_id:
        return receipt_id
    return jws if len(jws) <= _LABEL_PREFIX else jws[:_LABEL_PREFIX] + "..."


def parse_receipt(jws: str) -> Receipt:
    """Parse and check the form of every field of one compact JWS.

    Raises:
        RuleBroken: the first rule the receipt breaks.
    """
    header_b64, body_b64, signature_b64 = _segments(jws)
    header = _decode(header_b64, "JWS header")
    signature = _decode(signature_b64, "JWS signature")
    if header != JWS_HEADER:
        raise RuleBroken("algorithm-mismatch", f"JWS header {header!r} is not {JWS_HEADER!r}")
    payload = _payload(_decode(body_b64, "JWS payload"))
    closed = _check_suite_and_serial(payload)
    _chain(payload.chain)
    return Receipt(
        jws=jws,
        payload=payload,
        signing_input=f"{header_b64}.{body_b64}".encode("ascii"),
        signature=signature,
        issued_at=receipt_date_time(payload.issued_at),
        amounts=_amounts(payload.amounts),
        counter_bytes=_counter(payload.counter),
        closed=closed,
    )


def _segments(jws: str) -> tuple[str, str, str]:
    segments = jws.split(".")
    if len(segments) != 3:
        raise RuleBroken(MALFORMED, f"JWS has {len(segments)} segments instead of three")
    if "=" in jws:
        raise RuleBroken(MALFORMED, "base64 padding was used in the JWS")
    for what, segment in zip(("header", "payload", "signature"), segments, strict=True):
        if not _B64URL_RE.fullmatch(segment):
            raise RuleBroken(MALFORMED, f"JWS {what} is not base64url encoded")
    return segments[0], segments[1], segments[2]


def _decode(segment: str, what: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError as exc:
        raise RuleBroken(MALFORMED, f"{what} is not base64url encoded") from exc


def _payload(body: bytes) -> Payload:
    try:
        payload = Payload.parse(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RuleBroken(MALFORMED, f"JWS payload invalid: {exc}") from exc
    for name, value in (("Kassen-ID", payload.register_id), ("Belegnummer", payload.receipt_id)):
        if not value:
            raise RuleBroken(MALFORMED, f"{name} is empty")
    return payload


def _check_suite_and_serial(payload: Payload) -> bool:
    """Check field 1 and field 11; returns True for a closed system (AT0)."""
    parts = payload.suite.split("-")
    if len(parts) != 2:
        raise RuleBroken(MALFORMED, f"{payload.suite!r} is not algorithm-ZDA")
    algorithm, zda = parts
    if not _ALGORITHM_RE.fullmatch(algorithm):
        raise RuleBroken(MALFORMED, f"algorithm id {algorithm!r} invalid")
    if not _ZDA_RE.fullmatch(zda):
        raise RuleBroken(MALFORMED, f"ZDA id {zda!r} invalid")
    if algorithm != "R1":
        raise RuleBroken("algorithm-unknown", f"only suite R1 is known, got {algorithm!r}")
    closed_serial = _serial_is_closed(payload.cert_serial)
    if closed_serial != (zda == "AT0"):
        raise RuleBroken(
            "certificate-provider-invalid",
            f"ZDA {zda} does not fit the serial/key id {payload.cert_serial!r}",
        )
    return closed_serial


def _serial_is_closed(serial: str) -> bool:
    if not serial:
        raise RuleBroken(MALFORMED, "Zertifikat-Seriennummer is empty")
    if _CLOSED_SERIAL_RE.fullmatch(serial):
        return True
    if _HEX_RE.fullmatch(serial):
        return False
    raise RuleBroken(
        "certificate-serial-invalid", f"{serial!r} is neither a certificate serial nor a key id"
    )


def receipt_date_time(text: str) -> datetime:
    """Field 4 (Beleg-Datum-Uhrzeit) as a naive local time: ``yyyy-MM-ddTHH:mm:ss``, a real
    date and time, no offset; anything else breaks ``malformed-receipt``."""
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError(text)
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")
    except ValueError as exc:
        raise RuleBroken(MALFORMED, f"Beleg-Datum-Uhrzeit {text!r} invalid") from exc


def _amounts(texts: tuple[str, str, str, str, str]) -> tuple[int, int, int, int, int]:
    cents = []
    for name, text in zip(_AMOUNT_NAMES, texts, strict=True):
        try:
            if not (text.isascii() and AMOUNT_RE.fullmatch(text)):
                raise ValueError(text)  # amount_to_cents alone lets "1,00\n" pass
            cents.append(amount_to_cents(text))
        except ValueError as exc:
            raise RuleBroken(MALFORMED, f"{name} {text!r} invalid") from exc
    return cents[0], cents[1], cents[2], cents[3], cents[4]


def _counter(field: str) -> bytes | None:
    if field in (STORNO_MARKER, TRAINING_MARKER):
        return None
    try:
        data = b64_decode(field)
    except ValueError as exc:
        raise RuleBroken(MALFORMED, f"turnover counter {field!r} is not base64") from exc
    if not MIN_COUNTER_BYTES <= len(data) <= MAX_COUNTER_BYTES:
        raise RuleBroken(MALFORMED, f"turnover counter {field!r} has {len(data)} bytes")
    return data


def _chain(field: str) -> None:
    try:
        size = len(b64_decode(field))
    except ValueError as exc:
        raise RuleBroken(MALFORMED, f"chaining value {field!r} is not base64") from exc
    if size != 8:
        raise RuleBroken(MALFORMED, f"chaining value {field!r} does not hold 8 bytes")


# --- keys and certificates ---------------------------------------------------------


def serial_numbers(serial: str) -> set[int]:
    """The certificate serial numbers a field-11 value can mean: hex and decimal."""
    digits = serial.lstrip("-")
    numbers = set()
    if _HEX_RE.fullmatch(digits):
        numbers.add(int(digits, 16))
    if _DECIMAL_RE.fullmatch(digits):
        with contextlib.suppress(ValueError):  # more digits than int() takes: no serial
            numbers.add(int(digits, 10))
    return numbers


def load_certificate(der: bytes, where: str) -> x509.Certificate:
    """Parse a DER certificate.

    Raises:
        DepFormatError: ``der`` is not a certificate.
    """
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise DepFormatError(f"{where}: not a DER certificate") from exc


def _ec_key(key: object, where: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DepFormatError(f"{where}: not an EC public key")
    return key


def certificate_key(cert: x509.Certificate, where: str) -> ec.EllipticCurvePublicKey:
    """The EC public key of ``cert``.

    Raises:
        DepFormatError: another kind of key, a curve we do not know, or a broken key
            (the certificate parses without its key being read).
    """
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DepFormatError(f"{where}: public key unreadable: {exc}") from exc
    return _ec_key(key, where)


class KeyStore:
    """The container's signing keys and trusted certificates."""

    def __init__(self, container: CryptoContainer) -> None:
        self._by_id: dict[str, ec.EllipticCurvePublicKey] = {}
        self._by_number: dict[int, list[ec.EllipticCurvePublicKey]] = {}
        self.certificates: list[x509.Certificate] = []
        for entry in container.entries.values():
            self._add(entry.id, entry.device_type, entry.der)

    def _add(self, entry_id: str, kind: str, der: bytes) -> None:
        where = f"crypto container entry {entry_id!r}"
        if kind == CERTIFICATE:
            cert = load_certificate(der, where)
            self.certificates.append(cert)
            key = certificate_key(cert, where)
            self._index(cert.serial_number, key)
        else:
            try:
                key = _ec_key(serialization.load_der_public_key(der), where)
            except ValueError as exc:
                raise DepFormatError(f"{where}: not a DER public key") from exc
            except UnsupportedAlgorithm as exc:
                raise DepFormatError(f"{where}: public key unreadable: {exc}") from exc
        self._by_id[entry_id] = key
        if _HEX_RE.fullmatch(entry_id):
            self._index(int(entry_id.lstrip("-"), 16), key)

    def _index(self, number: int, key: ec.EllipticCurvePublicKey) -> None:
        keys = self._by_number.setdefault(number, [])
        if all(known is not key for known in keys):
            keys.append(key)

    def keys_for(self, serial: str, closed: bool) -> list[ec.EllipticCurvePublicKey]:
        """Keys that may have signed a receipt with field 11 ``serial``."""
        if serial in self._by_id:
            return [self._by_id[serial]]
        if closed:
            return []
        return [key for n in serial_numbers(serial) for key in self._by_number.get(n, [])]


def check_certificates(
    cert: x509.Certificate, chain: list[x509.Certificate], store: KeyStore
) -> Iterator[tuple[str, str]]:
    """Check a group certificate and its CA chain against the container.

    Yields at most one ``(rule, message)``: serial collision, broken chain, or untrusted.
    """
    path = [cert, *chain]
    for index, current in enumerate(path):
        known = [c for c in store.certificates if c.serial_number == current.serial_number]
        if any(c == current for c in known):
            return
        if known:
            message = f"another certificate with serial {current.serial_number:x} is trusted"
            yield "certificate-serial-collision", message
            return
        if index + 1 < len(path) and not _issued_by(current, path[index + 1]):
            message = f"{current.serial_number:x} not signed by {path[index + 1].serial_number:x}"
            yield "certificate-chain-broken", message
            return
    if not any(_issued_by(path[-1], anchor) for anchor in store.certificates):
        message = f"certificate {cert.serial_number:x} has no trusted issuer in the container"
        yield "certificate-untrusted", message


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True

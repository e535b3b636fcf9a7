"""The signed payload, the JWS and the machine-readable codes (reference/rksv.md 1, 2, 4, 5).

A :class:`Payload` holds the 12 signed fields. ``Payload.text()`` is the string that is
signed (it starts with ``_``); :func:`jws_compact` wraps it into the JWS kept in the DEP;
:func:`qr_code` and :func:`ocr_code` give the two printable forms.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agent.at_rksv.encoding import b32_each, b64, b64_decode, b64url, b64url_decode

__all__ = [
    "AUSTRIAN_ZONES",
    "FALLBACK_SIGNATURE",
    "FALLBACK_TEXT",
    "JWS_HEADER",
    "JWS_HEADER_B64",
    "REGISTER_ID_RULE",
    "Payload",
    "chain_value",
    "is_fallback",
    "is_register_id",
    "jws_compact",
    "ocr_code",
    "qr_code",
    "signing_input",
    "split_jws",
]

JWS_HEADER = b'{"alg":"ES256"}'
JWS_HEADER_B64 = b64url(JWS_HEADER)
FALLBACK_TEXT = "Sicherheitseinrichtung ausgefallen"
# field 4 (Beleg-Datum-Uhrzeit) is Austrian local time (reference/rksv.md 1.1); tzdata links
# no other name to Europe/Vienna (no "L Europe/Vienna ..." in tzdata.zi), so it is the only one
AUSTRIAN_ZONES = frozenset({"Europe/Vienna"})
FALLBACK_SIGNATURE = FALLBACK_TEXT.encode("utf-8")
REGISTER_ID_RULE = (
    "a Kassen-ID is 1-64 of letters, digits, '.', ':' and '-' (no '_'), not '.' or '..'"
    " (it names the register's directory of DEP backups)"
)
_REGISTER_ID = re.compile(r"[A-Za-z0-9.:-]{1,64}")
_DOT_NAMES = (".", "..")  # this and the parent directory, not a directory of their own


def is_register_id(value: str) -> bool:
    """Whether ``value`` keeps :data:`REGISTER_ID_RULE`: ``init`` and the configuration both
    ask here, so ``config check`` refuses what ``run`` would."""
    return bool(_REGISTER_ID.fullmatch(value)) and value not in _DOT_NAMES


@dataclass(frozen=True, slots=True)
class Payload:
    """The 12 signed fields of an RKSV receipt, already formatted as strings."""

    suite: str  # e.g. "R1-AT1"
    register_id: str
    receipt_id: str
    issued_at: str  # yyyy-MM-ddTHH:mm:ss, Austrian local time
    amounts: tuple[str, str, str, str, str]  # normal, reduced1, reduced2, zero, special
    counter: str  # encrypted counter, or U1RP / VFJB
    cert_serial: str
    chain: str

    def _front(self) -> str:
        """Fields 1 to 9 (up to the amounts), each after a ``_``: the same in every form."""
        amounts = "_".join(self.amounts)
        return f"_{self.suite}_{self.register_id}_{self.receipt_id}_{self.issued_at}_{amounts}"

    def text(self) -> str:
        """The exact string that is signed: ``_`` + the fields joined by ``_``."""
        return f"{self._front()}_{self.counter}_{self.cert_serial}_{self.chain}"

    @classmethod
    def parse(cls, text: str) -> Payload:
        """Split a payload string into its fields.

        Raises:
            ValueError: the text does not have the 12 fields after a leading ``_``.
        """
        parts = text.split("_")
        if len(parts) != 13 or parts[0] != "":
            raise ValueError(f"payload must be '_' + 12 fields joined by '_', got {len(parts) - 1}")
        f = parts[1:]
        return cls(f[0], f[1], f[2], f[3], (f[4], f[5], f[6], f[7], f[8]), f[9], f[10], f[11])


def signing_input(payload: Payload) -> bytes:
    """The ASCII bytes that ES256 signs: ``base64url(header) . base64url(payload)``."""
    return f"{JWS_HEADER_B64}.{b64url(payload.text().encode('utf-8'))}".encode("ascii")


def jws_compact(signed: Payload | bytes, signature: bytes) -> str:
    """The compact JWS of a payload, or of its signing input when the caller has it;
    ``signature`` is R||S (64 bytes) or the fallback text."""
    data = signing_input(signed) if isinstance(signed, Payload) else signed
    return f"{data.decode('ascii')}.{b64url(signature)}"


def split_jws(jws: str) -> tuple[Payload, bytes, bytes]:
    """Parse a compact JWS into (payload, signature bytes, raw header bytes).

    Raises:
        ValueError: wrong segment count, padding, bad base64url or bad payload.
    """
    segments = jws.split(".")
    if len(segments) != 3:
        raise ValueError("JWS does not have exactly three segments")
    header, body, signature = (b64url_decode(s) for s in segments)
    return Payload.parse(body.decode("utf-8")), signature, header


def is_fallback(signature: bytes) -> bool:
    """True when the signature segment is the "Sicherheitseinrichtung ausgefallen" marker."""
    return signature == FALLBACK_SIGNATURE


def qr_code(payload: Payload, signature: bytes) -> str:
    """The QR content: payload + ``_`` + standard base64 of the signature."""
    return f"{payload.text()}_{b64(signature)}"


def ocr_code(payload: Payload, signature: bytes) -> str:
    """The OCR form: counter, chain and signature re-encoded in base32."""
    counter, chain, signed = b32_each(
        (b64_decode(payload.counter), b64_decode(payload.chain), signature)
    )
    return f"{payload._front()}_{counter}_{payload.cert_serial}_{chain}_{signed}"


def chain_value(previous_jws: str | None, register_id: str) -> str:
    """Sig-Voriger-Beleg: base64 of SHA-256(previous JWS or, for the first, the Kassen-ID)[:8]."""
    source = register_id if previous_jws is None else previous_jws
    return b64(hashlib.sha256(source.encode("utf-8")).digest()[:8])

"""Byte and amount encodings of RKSV (reference/rksv.md sections 1.1, 2 and 3).

Money is always integer euro cents inside the agent. The signed payload carries gross
amounts as ``-?\\d+,\\d\\d`` without thousands separators; the QR code uses standard
base64 with padding, the JWS base64url without padding, the OCR form base32.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = [
    "AMOUNT_RE",
    "amount_to_cents",
    "b32",
    "b64",
    "b64_decode",
    "b64url",
    "b64url_decode",
    "cents_to_amount",
]

AMOUNT_RE = re.compile(r"-?([1-9][0-9]*|0),[0-9][0-9]")


def b64(data: bytes) -> str:
    """Standard base64 with ``=`` padding."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str) -> bytes:
    """Strict standard base64; raises ``ValueError`` on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not valid base64: {text!r}") from exc


def b64url(data: bytes) -> str:
    """base64url without padding, as in a JWS compact serialization."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; padding or foreign characters raise ``ValueError``."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError(f"not valid unpadded base64url: {text[:40]!r}")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32_ALPHABET for b in _B32_ALPHABET]  # 10 bits -> 2 characters
_B32_PAD = (0, 6, 4, 3, 1)  # '=' characters after 0..4 trailing bytes of a 5-byte group


def b32(data: bytes) -> str:
    """RFC 4648 base32 with padding, as in the OCR form.

    The same result as ``base64.b32encode``, in one big-integer pass (10 bits, two
    characters, per step) instead of a loop over 5-byte groups: it runs for every receipt.
    """
    size = len(data)
    spare = -size % 5
    value = int.from_bytes(data, "big") << (8 * spare)
    pairs = _B32_PAIRS
    text = "".join([pairs[(value >> s) & 1023] for s in range((size + spare) * 8 - 10, -1, -10)])
    pad = _B32_PAD[size % 5]
    return text[: len(text) - pad] + "=" * pad if pad else text


def cents_to_amount(cents: int) -> str:
    """Format cents as an RKSV amount: ``1234,56``, ``-0,56``, ``0,00`` (never ``-0,00``)."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole},{frac:02d}"


def amount_to_cents(text: str) -> int:
    """Parse an RKSV amount string strictly; raises ``ValueError`` on any other form."""
    if not AMOUNT_RE.fullmatch(text):
        raise ValueError(f"amount {text!r} is not of the form -?\\d+,\\d\\d")
    negative = text.startswith("-")
    whole, frac = text.lstrip("-").split(",")
    cents = int(whole) * 100 + int(frac)
    return -cents if negative else cents

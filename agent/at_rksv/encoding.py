"""Byte and amount encodings of RKSV (reference/rksv.md sections 1.1, 2 and 3).

Money is always integer euro cents inside the agent. The signed payload carries gross
amounts as ``-?\\d+,\\d\\d`` without thousands separators; the QR code uses standard
base64 with padding, the JWS base64url without padding, the OCR form base32.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

__all__ = [
    "AMOUNT_RE",
    "amount_to_cents",
    "b32",
    "b32_each",
    "b64",
    "b64_decode",
    "b64url",
    "b64url_decode",
    "cents_to_amount",
]

AMOUNT_RE = re.compile(r"-?([1-9][0-9]*|0),[0-9][0-9]")


# the encoders call binascii directly: what base64.b64encode and urlsafe_b64encode do,
# without their layers, for the several encodings of every receipt
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64(data: bytes) -> str:
    """Standard base64 with ``=`` padding."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64_decode(text: str) -> bytes:
    """Strict standard base64; raises ``ValueError`` on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not valid base64: {text!r}") from exc


def b64url(data: bytes) -> str:
    """base64url without padding, as in a JWS compact serialization."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).decode("ascii").rstrip("=")


_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; padding or foreign characters raise ``ValueError``."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError(f"not valid unpadded base64url: {text[:40]!r}")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B32_TABLE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".ljust(256, b"\0")  # 5-bit value -> letter
_B32_PAD = (0, 6, 4, 3, 1)  # '=' characters after 0..4 trailing bytes of a 5-byte group
_B32_CHUNK = 64  # 5-byte groups per conversion: the masks below are this long


def _b32_masks(move: str, keep: str) -> tuple[int, int]:
    """Per 8-byte slot (hex, big-endian): the bits that move up and the bits that stay."""
    return (
        int.from_bytes(bytes.fromhex(move) * _B32_CHUNK, "big"),
        int.from_bytes(bytes.fromhex(keep) * _B32_CHUNK, "big"),
    )


# a slot's 40 bits become two 20-bit halves 32 bits apart, those four 10-bit quarters
# 16 bits apart, those eight 5-bit values 8 bits apart: one base32 digit per byte
_B32_MOVE20, _B32_KEEP20 = _b32_masks("000000FFFFF00000", "00000000000FFFFF")
_B32_MOVE10, _B32_KEEP10 = _b32_masks("000FFC00000FFC00", "000003FF000003FF")
_B32_MOVE5, _B32_KEEP5 = _b32_masks("03E003E003E003E0", "001F001F001F001F")


def _b32_groups(data: bytes) -> str:
    """base32 of whole 5-byte groups, no padding.

    Every receipt's OCR form runs this: the bits are spread with a few big-integer
    operations and one ``translate`` instead of a Python loop over the digits.
    """
    if len(data) > 5 * _B32_CHUNK:
        step = 5 * _B32_CHUNK
        return "".join([_b32_groups(data[i : i + step]) for i in range(0, len(data), step)])
    slots = bytearray(len(data) // 5 * 8)  # each group in the low 5 bytes of 8
    slots[3::8] = data[0::5]
    slots[4::8] = data[1::5]
    slots[5::8] = data[2::5]
    slots[6::8] = data[3::5]
    slots[7::8] = data[4::5]
    value = int.from_bytes(slots, "big")
    value = (value & _B32_KEEP20) | (value & _B32_MOVE20) << 12
    value = (value & _B32_KEEP10) | (value & _B32_MOVE10) << 6
    value = (value & _B32_KEEP5) | (value & _B32_MOVE5) << 3
    return value.to_bytes(len(slots), "big").translate(_B32_TABLE).decode("ascii")


def b32_each(parts: Sequence[bytes]) -> list[str]:
    """RFC 4648 base32 with padding of each of ``parts``, in one conversion: each part is
    zero-filled to whole 5-byte groups, whose last digits then give way to the padding."""
    text = _b32_groups(b"".join([part + bytes(-len(part) % 5) for part in parts]))
    out = []
    start = 0
    for part in parts:
        end = start + (len(part) + 4) // 5 * 8
        pad = _B32_PAD[len(part) % 5]
        out.append(text[start : end - pad] + "=" * pad)
        start = end
    return out


def b32(data: bytes) -> str:
    """RFC 4648 base32 with padding, as in the OCR form (``base64.b32encode``)."""
    return b32_each((data,))[0]


def cents_to_amount(cents: int) -> str:
    """Format cents as an RKSV amount: ``1234,56``, ``-0,56``, ``0,00`` (never ``-0,00``)."""
    if cents < 0:  # %-formatting of divmod: the fastest form, for the amounts of every receipt
        return "-%d,%02d" % divmod(-cents, 100)  # noqa: UP031
    return "%d,%02d" % divmod(cents, 100)  # noqa: UP031


def amount_to_cents(text: str) -> int:
    """Parse an RKSV amount string strictly; raises ``ValueError`` on any other form."""
    if not AMOUNT_RE.fullmatch(text):
        raise ValueError(f"amount {text!r} is not of the form -?\\d+,\\d\\d")
    negative = text.startswith("-")
    whole, frac = text.lstrip("-").split(",")
    cents = int(whole) * 100 + int(frac)
    return -cents if negative else cents

"""The turnover counter field "Stand-Umsatz-Zaehler-AES256-ICM" (reference/rksv.md section 3).

The counter (euro cents) is written as an N-byte big-endian two's complement number at
the start of a zero block and encrypted with AES-256 in CTR mode; the IV is the first 16
bytes of SHA-256(Kassen-ID || Belegnummer). Storno and Training receipts carry a marker
instead of the ciphertext.
"""

from __future__ import annotations

import functools
import hashlib
import threading

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from agent.at_rksv.encoding import b64, b64_decode

__all__ = [
    "ISSUED_COUNTER_BYTES_MAX",
    "ISSUED_COUNTER_BYTES_RULE",
    "MAX_COUNTER_BYTES",
    "MIN_COUNTER_BYTES",
    "STORNO_MARKER",
    "TRAINING_MARKER",
    "aes_key_check_value",
    "counter_iv",
    "decrypt_counter",
    "encrypt_counter",
]

STORNO_MARKER = b64(b"STO")  # "U1RP"
TRAINING_MARKER = b64(b"TRA")  # "VFJB"
MIN_COUNTER_BYTES = 5
MAX_COUNTER_BYTES = 16  # what a DEP may carry (the verifier reads up to this, as ztp does)
# what a register of ours is created with (rksv.md 3.3): the BMF's sample code writes 5 to
# 8 bytes and its Prüftool 1.1.x fails on 16-byte counters, so 9 to 16 are not offered
ISSUED_COUNTER_BYTES_MAX = 8
ISSUED_COUNTER_BYTES_RULE = (
    f"the turnover counter has {MIN_COUNTER_BYTES} to {ISSUED_COUNTER_BYTES_MAX} bytes"
    " (8 is advised; the BMF's Prüftool fails on longer ones)"
)


def counter_iv(register_id: str, receipt_id: str) -> bytes:
    """IV of the counter block: SHA-256 over the UTF-8 Kassen-ID and Belegnummer, 16 bytes."""
    return hashlib.sha256((register_id + receipt_id).encode("utf-8")).digest()[:16]


def _keystream(key: bytes, iv: bytes) -> bytes:
    """The first CTR keystream block, AES_K(IV): a counter has at most 16 bytes.

    One block of CTR keystream is the block cipher applied to the IV, so a cached ECB
    context of the key gives it without a new key schedule per receipt.
    """
    block, lock = _block_cipher(key)
    with lock:
        return block.update(iv)


@functools.lru_cache(maxsize=32)
def _block_cipher(key: bytes) -> tuple[CipherContext, threading.Lock]:
    if len(key) != 32:
        raise ValueError(f"the AES key must be 32 bytes (AES-256), got {len(key)}")
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor(), threading.Lock()  # noqa: S305


def encrypt_counter(
    key: bytes, register_id: str, receipt_id: str, cents: int, length: int = 8
) -> str:
    """Encrypt ``cents`` into the base64 counter field of ``length`` bytes.

    Raises:
        ValueError: the length is outside 5..16 or the value does not fit.
    """
    if not MIN_COUNTER_BYTES <= length <= MAX_COUNTER_BYTES:
        raise ValueError(f"counter length must be 5..16 bytes, got {length}")
    try:
        plain = cents.to_bytes(length, "big", signed=True)
    except OverflowError as exc:
        raise ValueError(f"{cents} cents do not fit a {length}-byte counter") from exc
    stream = _keystream(key, counter_iv(register_id, receipt_id))[:length]
    cipher = int.from_bytes(plain, "big") ^ int.from_bytes(stream, "big")
    return b64(cipher.to_bytes(length, "big"))


def decrypt_counter(key: bytes, register_id: str, receipt_id: str, field: str) -> int:
    """Decrypt a counter field back to cents; its byte length is taken from the field.

    Raises:
        ValueError: the field is not base64 or has a length outside 5..16 bytes.
    """
    data = b64_decode(field)
    if not MIN_COUNTER_BYTES <= len(data) <= MAX_COUNTER_BYTES:
        raise ValueError(f"encrypted counter has {len(data)} bytes, allowed are 5..16")
    stream = _keystream(key, counter_iv(register_id, receipt_id))
    plain = bytes(c ^ s for c, s in zip(data, stream, strict=False))
    return int.from_bytes(plain, "big", signed=True)


def aes_key_check_value(b64_key: str) -> str:
    """The 4-character Pruefwert of a base64 AES key: base64(SHA-256(key text)[:3])."""
    return b64(hashlib.sha256(b64_key.encode("ascii")).digest()[:3]).rstrip("=")

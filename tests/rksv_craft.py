"""Crafted DEPs, signed with the public TEST key of ``vectors/rksv/e2e_open``.

:func:`build` makes one group of receipts from short specifications, so that a test can
break one thing (a counter, the Startbeleg) and keep every signature valid.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.at_rksv import (
    Payload,
    cents_to_amount,
    chain_value,
    encrypt_counter,
    jws_compact,
    signing_input,
)
from agent.at_rksv.counter import STORNO_MARKER, TRAINING_MARKER
from agent.at_rksv.payload import FALLBACK_SIGNATURE
from factories import VECTORS, require_vectors

E2E = VECTORS / "e2e_open"
CONTAINER_FILE = E2E / "cryptographicMaterialContainer.json"


@functools.cache
def _expected() -> dict[str, Any]:
    """The vector's known answers, read when a test first crafts (so a checkout without the
    vectors collects, and the test is skipped)."""
    require_vectors()
    expected: dict[str, Any] = json.loads((E2E / "expected.json").read_text(encoding="utf-8"))
    return expected


@dataclass(frozen=True)
class Spec:
    """One receipt: its amount (Normal rate, cents), kind and whether it is signed.

    ``counter`` replaces the running total written into the receipt (a broken counter).
    """

    cents: int = 0
    kind: str = "std"  # std, sto (Storno), tra (Training)
    signed: bool = True
    counter: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sign(data: bytes) -> bytes:
    key = serialization.load_pem_private_key(_expected()["privateKeyPem"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def receipts(specs: list[Spec]) -> list[str]:
    """The compact JWS of ``specs`` in order, chained from the Startbeleg on."""
    if not specs:
        return []  # needs no vector: an empty DEP is built at import
    expected = _expected()
    aes_key, register = base64.b64decode(expected["base64AESKey"]), expected["cashBoxId"]
    jws: list[str] = []
    total = 0
    for number, spec in enumerate(specs, 1):
        receipt_id = f"B{number:04d}"
        if spec.kind != "tra":
            total += spec.cents
        if spec.kind == "sto":
            counter = STORNO_MARKER
        elif spec.kind == "tra":
            counter = TRAINING_MARKER
        else:
            written = total if spec.counter is None else spec.counter
            counter = encrypt_counter(aes_key, register, receipt_id, written, 8)
        amounts = (cents_to_amount(spec.cents), *(cents_to_amount(0),) * 4)
        payload = Payload(
            "R1-AT1",
            register,
            receipt_id,
            f"2026-01-02T08:{number // 60:02d}:{number % 60:02d}",
            amounts,  # type: ignore[arg-type]
            counter,
            expected["certificateSerialField"],
            chain_value(jws[-1] if jws else None, register),
        )
        data = signing_input(payload)
        jws.append(jws_compact(data, _sign(data) if spec.signed else FALLBACK_SIGNATURE))
    return jws


def dep(items: list[str]) -> dict[str, Any]:
    """A DEP of one group without certificates holding ``items``."""
    group = {"Signaturzertifikat": "", "Zertifizierungsstellen": [], "Belege-kompakt": items}
    return {"Belege-Gruppe": [group]}


def build(specs: list[Spec]) -> dict[str, Any]:
    return dep(receipts(specs))


def container(*, aes_key: bool = True) -> dict[str, Any]:
    """The e2e_open crypto container, with or without its AES key."""
    require_vectors()
    document: dict[str, Any] = json.loads(CONTAINER_FILE.read_text(encoding="utf-8"))
    if not aes_key:
        del document["base64AESKey"]
    return document

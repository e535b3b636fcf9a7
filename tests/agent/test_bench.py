"""The benchmark's floor does the work it claims, so its figure bounds the receipt path."""

from __future__ import annotations

import base64
import hashlib
import itertools
import sqlite3
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from agent.bench import _floor
from agent.signing.base import verify_rs


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_floor_signs_chains_and_commits_every_receipt(tmp_path: Path) -> None:
    """Each floor receipt is committed, verifies, chains to the one before, and is counted."""
    floor = _floor(tmp_path)
    for n in range(20):
        assert floor(n) > 0
    db = sqlite3.connect(tmp_path / "floor.sqlite3")
    number, turnover, last_jws, der = db.execute("SELECT * FROM register").fetchone()[1:]
    assert (number, turnover) == (20, 20 * 1670)  # the sale's 12.50 + 2 x 2.10, in cents
    public = load_der_public_key(der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    previous = "BENCH-1"
    for (jws,) in db.execute("SELECT jws FROM receipt ORDER BY number"):
        header, payload, signature = jws.split(".")
        assert verify_rs(public, f"{header}.{payload}".encode(), _unb64url(signature))
        chain = base64.b64encode(hashlib.sha256(previous.encode()).digest()[:8]).decode()
        assert _unb64url(payload).decode().endswith("_" + chain)
        previous = jws
    assert previous == last_jws
    hashes = db.execute("SELECT seq, data, hash FROM journal ORDER BY seq").fetchall()
    assert len(hashes) == 21  # the genesis row and one event per receipt
    for (_, _, prev), (seq, data, digest) in itertools.pairwise(hashes):
        assert hashlib.sha256(f"{seq}\x1f{data}\x1f{prev}".encode()).hexdigest() == digest


def test_floor_verifies_each_signature(tmp_path: Path) -> None:
    """A unit whose signatures do not match its public key stops the floor: the verify is
    part of the work measured, as it is in the receipt path."""
    signer = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    floor = _floor(tmp_path, key=signer, public=other)
    with pytest.raises(InvalidSignature):
        floor(0)

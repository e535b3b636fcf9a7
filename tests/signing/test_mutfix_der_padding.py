"""ES256 in JWS form: R and S are 32 bytes each, leading zero bytes included (RFC 7518 3.4).

About one ECDSA P-256 signature in 128 has an r or an s below 2**248, one byte shorter in
DER than the others. Cut to its own length, such a signature would be 63 bytes, fail
verification and make a sale a fallback receipt with an outage, for a unit that works.
The conformance vectors hold no such signature, so the values are made here.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from agent.signing import UnitConfig, der_to_rs, open_unit, rs_to_der, sign_verified, verify_rs
from agent.signing.software import load_certificate

SHORT = 2**248  # below it, a value has a leading zero byte in its 32
TRIES = 4096  # a short r or s comes once in ~128 signatures: missing it is ~e**-32


@pytest.mark.parametrize(
    ("r", "s"),
    [
        pytest.param(1, 2**255 + 7, id="r-one-byte"),
        pytest.param(2**247 + 5, 2**255 + 11, id="r-31-bytes"),
        pytest.param(2**255 + 13, 2**240 + 3, id="s-30-bytes"),
    ],
)
def test_short_values_are_padded_to_32_bytes(r: int, s: int) -> None:
    """Each value keeps its leading zero bytes, and the conversion goes back to the DER."""
    der = encode_dss_signature(r, s)
    rs = der_to_rs(der)
    assert len(rs) == 64
    assert rs == r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert rs_to_der(rs) == der


def _with_a_short_value(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, int, int]:
    """A message whose RFC 6979 signature under ``key`` has r or s below 2**248: the
    message, r and s (found without the code under test)."""
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    for counter in range(TRIES):
        data = f"receipt {counter}".encode()
        r, s = decode_dss_signature(key.sign(data, algorithm))
        if min(r, s) < SHORT:
            return data, r, s
    pytest.fail(f"no signature with a short r or s in {TRIES} messages")


def test_a_software_signature_with_a_leading_zero_byte_verifies(unit_config: UnitConfig) -> None:
    """The software unit (RFC 6979, deterministic) signs a message whose r or s is short:
    the signature is the 64-byte R||S and it verifies against the certificate."""
    assert unit_config.key_file is not None
    assert unit_config.certificate_file is not None
    key = serialization.load_pem_private_key(unit_config.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    data, r, s = _with_a_short_value(key)
    unit = open_unit(unit_config)
    try:
        signature = sign_verified(unit, data, timeout=5)
    finally:
        unit.close()
    assert signature == r.to_bytes(32, "big") + s.to_bytes(32, "big")
    certified = load_certificate(unit_config.certificate_file).public_key()
    assert isinstance(certified, ec.EllipticCurvePublicKey)
    assert verify_rs(certified, data, signature)

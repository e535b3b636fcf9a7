"""The pkcs11 unit against a real SoftHSM2 token."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pkcs11")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, Mechanism
from pkcs11 import exceptions as p11

from agent.at_rksv.payload import Payload, signing_input
from agent.errors import ConfigurationError, UnitUnavailable
from agent.signing import (
    SignatureUnit,
    UnitConfig,
    open_unit,
    sign_verified,
    verify_rs,
)
from agent.signing.pkcs11 import Pkcs11Unit, _choose_signer, _Signer, create_pkcs11_key

PAYLOAD = Payload(
    "R1-AT1",
    "KASSE-1",
    "17",
    "2024-03-01T10:15:00",
    ("12,50", "0,00", "0,00", "0,00", "0,00"),
    "bN9z7Gk3TtE=",
    "4a3f",
    "r0k7ZaNhC9Q=",
)
DATA = signing_input(PAYLOAD)


@dataclass(frozen=True, slots=True)
class TokenKey:
    label: str
    public_der: bytes


def make_certificate(public_der: bytes) -> x509.Certificate:
    """A certificate for ``public_der``, issued by a throwaway software key."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    subject_key = serialization.load_der_public_key(public_der)
    assert isinstance(subject_key, ec.EllipticCurvePublicKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "till-agent pkcs11 test unit")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(subject_key)
        .serial_number(secrets.randbits(63) | 1 << 62)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(issuer_key, hashes.SHA256())
    )


def write_certificate(cert: x509.Certificate, path: Path, encoding: Any) -> Path:
    path.write_bytes(cert.public_bytes(encoding))
    return path


def pkcs11_config(softhsm: Any, key_label: str, **overrides: Any) -> UnitConfig:
    fields: dict[str, Any] = {
        "id": "hsm1",
        "kind": "pkcs11",
        "module": softhsm.module,
        "token_label": softhsm.token_label,
        "pin": softhsm.pin,
        "key_label": key_label,
        "zda": "AT0",
        "key_id": "U:ATU12345678-HSM1",
    }
    fields.update(overrides)
    return UnitConfig(**fields)


def new_key(softhsm: Any) -> TokenKey:
    label = f"till-{uuid.uuid4().hex[:12]}"
    der = create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, label)
    return TokenKey(label, der)


@pytest.fixture(name="token_key", scope="module")
def token_key_fixture(softhsm: Any) -> TokenKey:
    return new_key(softhsm)


@pytest.fixture(name="certificate")
def certificate_fixture(token_key: TokenKey) -> x509.Certificate:
    return make_certificate(token_key.public_der)


@pytest.fixture(name="open_config")
def open_config_fixture(
    softhsm: Any, token_key: TokenKey, certificate: x509.Certificate, tmp_path: Path
) -> UnitConfig:
    cert_file = write_certificate(certificate, tmp_path / "unit.pem", serialization.Encoding.PEM)
    return pkcs11_config(
        softhsm, token_key.label, zda="AT1", key_id=None, certificate_file=cert_file
    )


@pytest.fixture(name="unit")
def unit_fixture(open_config: UnitConfig) -> Iterator[SignatureUnit]:
    unit = open_unit(open_config)
    yield unit
    unit.close()


class SlowKey:
    """Stands in for a token key that hangs until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes:
        self.release.wait(10)
        raise p11.DeviceError


class FailingKey:
    """Stands in for a token key whose every call fails with ``error``."""

    def __init__(self, error: p11.PKCS11Error) -> None:
        self.error = error

    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes:
        raise self.error


class UnsigningKey:
    """Stands in for a token key that answers everything but signing."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.handle = key.handle

    def __getitem__(self, attribute: Attribute) -> Any:
        return self.key[attribute]

    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes:
        raise p11.FunctionFailed


class DerKey:
    """Stands in for a token whose CKM_ECDSA answers a DER ECDSA-Sig-Value."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes, *, mechanism: Mechanism) -> bytes:
        return self.key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))


class TestOpen:
    def test_open_system_identity_comes_from_certificate_and_token(
        self, unit: SignatureUnit, token_key: TokenKey, certificate: x509.Certificate
    ) -> None:
        """An open system prints the hex certificate serial and keeps the certificate."""
        assert isinstance(unit, Pkcs11Unit)
        assert isinstance(unit, SignatureUnit)
        identity = unit.identity
        assert identity.suite == "R1-AT1"
        assert identity.serial == format(certificate.serial_number, "x")
        assert identity.certificate_der == certificate.public_bytes(serialization.Encoding.DER)
        assert identity.public_key_der == token_key.public_der
        assert not unit.capabilities.keeps_chain
        assert not unit.capabilities.remote

    def test_der_certificate_file_is_accepted(
        self, open_config: UnitConfig, certificate: x509.Certificate, tmp_path: Path
    ) -> None:
        """The certificate file may be DER instead of PEM."""
        der_file = write_certificate(certificate, tmp_path / "u.der", serialization.Encoding.DER)
        unit = open_unit(open_config.model_copy(update={"certificate_file": der_file}))
        try:
            assert unit.identity.certificate_der == der_file.read_bytes()
        finally:
            unit.close()

    def test_closed_system_uses_key_id(self, softhsm: Any, token_key: TokenKey) -> None:
        """A closed system (AT0) prints the key id and has no certificate."""
        unit = open_unit(pkcs11_config(softhsm, token_key.label))
        try:
            assert unit.identity.serial == "U:ATU12345678-HSM1"
            assert unit.identity.closed
            assert unit.identity.certificate_der is None
            assert unit.identity.public_key_der == token_key.public_der
            assert verify_rs(unit.identity.public_key(), DATA, sign_verified(unit, DATA, timeout=5))
        finally:
            unit.close()

    def test_wrong_pin_is_a_configuration_error(self, softhsm: Any, token_key: TokenKey) -> None:
        """A PIN the token rejects fails the open and says so."""
        with pytest.raises(ConfigurationError, match="rejected the PIN") as info:
            open_unit(pkcs11_config(softhsm, token_key.label, pin="0000"))
        assert isinstance(info.value.__cause__, p11.PinIncorrect)

    def test_missing_pin_is_a_configuration_error(self, softhsm: Any, token_key: TokenKey) -> None:
        """Without a PIN the unit cannot log in."""
        with pytest.raises(ConfigurationError, match="needs pin"):
            open_unit(pkcs11_config(softhsm, token_key.label, pin=None))

    def test_missing_key_label_is_a_configuration_error(self, softhsm: Any) -> None:
        """A key label the token does not hold fails the open and names the label."""
        with pytest.raises(ConfigurationError, match=r"'no-such-key'.*no key with this label"):
            open_unit(pkcs11_config(softhsm, "no-such-key"))

    def test_missing_token_is_a_configuration_error(
        self, softhsm: Any, token_key: TokenKey
    ) -> None:
        """A token label the module does not know fails the open."""
        with pytest.raises(ConfigurationError, match=r"'elsewhere'.*no token"):
            open_unit(pkcs11_config(softhsm, token_key.label, token_label="elsewhere"))

    def test_missing_module_is_a_configuration_error(
        self, softhsm: Any, token_key: TokenKey, tmp_path: Path
    ) -> None:
        """A module path that does not exist fails with an install hint."""
        config = pkcs11_config(softhsm, token_key.label, module=tmp_path / "nope.so")
        with pytest.raises(ConfigurationError, match=r"not found.*apt-get install softhsm2"):
            open_unit(config)

    def test_certificate_for_another_key_is_rejected(
        self, open_config: UnitConfig, tmp_path: Path
    ) -> None:
        """The certificate's public key must be the token's public key."""
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = make_certificate(
            other.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        cert_file = write_certificate(cert, tmp_path / "other.pem", serialization.Encoding.PEM)
        with pytest.raises(ConfigurationError, match="does not match"):
            open_unit(open_config.model_copy(update={"certificate_file": cert_file}))

    def test_failed_open_logs_out_again(self, softhsm: Any, token_key: TokenKey) -> None:
        """After a failed open no login lingers: the next wrong PIN is still detected."""
        with pytest.raises(ConfigurationError):
            open_unit(pkcs11_config(softhsm, "no-such-key"))
        with pytest.raises(ConfigurationError, match="rejected the PIN"):
            open_unit(pkcs11_config(softhsm, token_key.label, pin="0000"))


class TestSign:
    def test_signature_verifies_with_identity_key(
        self, unit: SignatureUnit, certificate: x509.Certificate
    ) -> None:
        """The token's R||S signature of the JWS signing input verifies (ES256)."""
        signature = unit.sign(DATA, deadline=time.monotonic() + 5)
        assert len(signature) == 64
        assert verify_rs(unit.identity.public_key(), DATA, signature)
        cert_key = certificate.public_key()
        assert isinstance(cert_key, ec.EllipticCurvePublicKey)
        assert verify_rs(cert_key, DATA, signature)
        assert not verify_rs(unit.identity.public_key(), DATA + b"x", signature)

    def test_sign_verified_accepts_token_signatures(self, unit: SignatureUnit) -> None:
        """The receipt service's checked path accepts the token's signatures."""
        signature = sign_verified(unit, DATA, timeout=5)
        assert verify_rs(unit.identity.public_key(), DATA, signature)

    def test_passed_deadline_is_unit_unavailable(self, unit: SignatureUnit) -> None:
        """A deadline already in the past fails without asking the token."""
        with pytest.raises(UnitUnavailable, match="deadline"):
            unit.sign(DATA, deadline=time.monotonic() - 1)

    def test_concurrent_signing_is_serialised(self, unit: SignatureUnit) -> None:
        """Many threads signing at once all get valid signatures."""
        inputs = [DATA + str(i).encode() for i in range(24)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            signatures = list(pool.map(lambda d: sign_verified(unit, d, timeout=20), inputs))
        key = unit.identity.public_key()
        assert all(verify_rs(key, d, s) for d, s in zip(inputs, signatures, strict=True))

    def test_hung_token_does_not_block_past_deadline(self, unit: SignatureUnit) -> None:
        """A token that hangs costs the caller its deadline, not more; later calls recover."""
        assert isinstance(unit, Pkcs11Unit)
        real_key, slow = unit._key, SlowKey()
        unit._key = slow
        try:
            for _ in range(2):  # the second call finds the session still busy
                start = time.monotonic()
                with pytest.raises(UnitUnavailable):
                    unit.sign(DATA, deadline=start + 0.3)
                assert time.monotonic() - start < 1.0
        finally:
            unit._key = real_key
            slow.release.set()
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_token_errors_become_unit_unavailable(self, unit: SignatureUnit) -> None:
        """A python-pkcs11 error at sign time is translated, with its cause kept."""
        assert isinstance(unit, Pkcs11Unit)
        real_key = unit._key
        unit._key = FailingKey(p11.DeviceRemoved())
        try:
            with pytest.raises(UnitUnavailable, match="token was removed") as info:
                unit.sign(DATA, deadline=time.monotonic() + 5)
        finally:
            unit._key = real_key
        assert isinstance(info.value.__cause__, p11.DeviceRemoved)

    def test_closed_unit_is_unavailable(self, open_config: UnitConfig) -> None:
        """After close the unit refuses to sign; closing twice is harmless."""
        unit = open_unit(open_config)
        unit.close()
        unit.close()
        with pytest.raises(UnitUnavailable, match="closed"):
            unit.sign(DATA, deadline=time.monotonic() + 5)


class TestProbe:
    def test_probe_answers(self, unit: SignatureUnit) -> None:
        """A healthy token answers the probe."""
        unit.probe(deadline=time.monotonic() + 5)

    def test_probe_never_signs(self, unit: SignatureUnit) -> None:
        """The probe asks the token about the key sign uses instead of signing."""
        assert isinstance(unit, Pkcs11Unit)
        real_key = unit._key
        unit._key = UnsigningKey(real_key)
        try:
            unit.probe(deadline=time.monotonic() + 5)
        finally:
            unit._key = real_key

    def test_probe_with_passed_deadline_fails(self, unit: SignatureUnit) -> None:
        """The probe obeys its deadline."""
        with pytest.raises(UnitUnavailable):
            unit.probe(deadline=time.monotonic() - 1)

    def test_probe_after_close_fails(self, open_config: UnitConfig) -> None:
        """A closed unit does not answer."""
        unit = open_unit(open_config)
        unit.close()
        with pytest.raises(UnitUnavailable):
            unit.probe(deadline=time.monotonic() + 5)


class TestSharedLogin:
    def test_two_units_on_one_token(self, softhsm: Any, unit: SignatureUnit) -> None:
        """A second unit on the same token joins the login; closing it keeps the first."""
        other_key = new_key(softhsm)
        other = open_unit(pkcs11_config(softhsm, other_key.label, id="hsm2"))
        try:
            assert len(sign_verified(other, DATA, timeout=5)) == 64
            assert len(sign_verified(unit, DATA, timeout=5)) == 64
        finally:
            other.close()
        unit.probe(deadline=time.monotonic() + 5)
        assert len(sign_verified(unit, DATA, timeout=5)) == 64

    def test_another_pin_while_open_is_rejected(
        self, softhsm: Any, token_key: TokenKey, unit: SignatureUnit
    ) -> None:
        """A unit cannot join a token's login with a different PIN (one never tried: a PIN
        the token refused earlier in this process is reported as refused first)."""
        with pytest.raises(ConfigurationError, match="another PIN"):
            open_unit(pkcs11_config(softhsm, token_key.label, pin="4321"))
        assert len(sign_verified(unit, DATA, timeout=5)) == 64


class TestCreateKey:
    def test_creates_a_p256_key(self, softhsm: Any) -> None:
        """The returned DER is an EC P-256 SubjectPublicKeyInfo."""
        key = new_key(softhsm)
        public = serialization.load_der_public_key(key.public_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"

    def test_private_key_cannot_leave_the_token(self, softhsm: Any) -> None:
        """The generated private key is sensitive and never extractable."""
        key = new_key(softhsm)
        unit = open_unit(pkcs11_config(softhsm, key.label))
        try:
            assert isinstance(unit, Pkcs11Unit)
            assert unit._key[Attribute.SENSITIVE] is True
            assert unit._key[Attribute.EXTRACTABLE] is False
        finally:
            unit.close()

    def test_taken_label_is_refused(self, softhsm: Any, token_key: TokenKey) -> None:
        """A second key with the same label would make the unit ambiguous."""
        with pytest.raises(ConfigurationError, match="exists"):
            create_pkcs11_key(softhsm.module, softhsm.token_label, softhsm.pin, token_key.label)

    def test_works_while_a_unit_is_open(self, softhsm: Any, unit: SignatureUnit) -> None:
        """Creating a key joins the open login and leaves the unit working."""
        new_key(softhsm)
        assert len(sign_verified(unit, DATA, timeout=5)) == 64


class TestMechanism:
    def test_prefers_host_hashing(self) -> None:
        """CKM_ECDSA over a host SHA-256 digest wins when the token offers it."""
        signer = _choose_signer({Mechanism.ECDSA_SHA256, Mechanism.ECDSA}, "t")
        assert signer == _Signer(Mechanism.ECDSA, prehash=True)

    def test_falls_back_to_token_hashing(self) -> None:
        """A token with only CKM_ECDSA_SHA256 hashes the data itself."""
        signer = _choose_signer({Mechanism.ECDSA_SHA256}, "t")
        assert signer == _Signer(Mechanism.ECDSA_SHA256, prehash=False)

    def test_no_ecdsa_is_a_configuration_error(self) -> None:
        """A token without ECDSA cannot be a signature unit."""
        with pytest.raises(ConfigurationError, match="neither"):
            _choose_signer({Mechanism.RSA_PKCS}, "t")

    def test_der_answers_are_converted(self) -> None:
        """A token that answers DER still yields a 64-byte R||S value."""
        key = DerKey()
        signature = _Signer(Mechanism.ECDSA, prehash=True).sign(key, DATA)
        assert len(signature) == 64
        assert verify_rs(key.key.public_key(), DATA, signature)

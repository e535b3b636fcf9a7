"""The ``software`` unit: an ECDSA P-256 key in a PKCS#8 file.

For development and for closed systems (``R1-AT0``). Signatures are deterministic
(RFC 6979), which makes DEP exports reproducible byte for byte from the same key.
:func:`create_software_unit` writes a new key with a self-signed certificate (open
system) or a key id (closed system).
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.durable import create_file
from agent.errors import ConfigurationError, UnitUnavailable
from agent.signing.base import Capabilities, Identity, der_to_rs, identity_from_certificate
from agent.signing.config import UNIT_ID_RULE, is_unit_id

__all__ = [
    "SoftwareUnit",
    "create_software_unit",
    "is_self_signed",
    "load_certificate",
    "software_unit_files",
]

_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_CAPABILITIES = Capabilities()  # asked at every receipt: one immutable value, made once


class SoftwareUnit:
    """Signs with a private key held in memory (loaded from a PKCS#8 PEM file)."""

    __slots__ = ("_identity", "_key")

    def __init__(self, key: ec.EllipticCurvePrivateKey, identity: Identity) -> None:
        self._key = key
        self._identity = identity

    @classmethod
    def from_files(
        cls,
        unit_id: str,
        key_file: Path,
        *,
        zda: str,
        certificate_file: Path | None = None,
        key_id: str | None = None,
    ) -> SoftwareUnit:
        """Load a key file, plus a certificate (open system) or a key id (closed system).

        Raises:
            ConfigurationError: a file is missing or unreadable, or the ids do not fit.
        """
        key = _load_private_key(key_file)
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if zda == "AT0":
            if not key_id:
                raise ConfigurationError(f"unit {unit_id}: a closed system (AT0) needs key_id")
            return cls(key, Identity(unit_id, zda, key_id, public_der))
        if certificate_file is None:
            raise ConfigurationError(f"unit {unit_id}: an open system needs a certificate")
        identity = identity_from_certificate(
            unit_id, zda, load_certificate(certificate_file), public_der
        )
        return cls(key, identity)

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    def sign(self, data: bytes, *, deadline: float) -> bytes:
        try:
            return der_to_rs(self._key.sign(data, _ECDSA))
        except Exception as exc:  # pragma: no cover - OpenSSL failure
            raise UnitUnavailable(f"software unit {self._identity.unit_id}: {exc}") from exc

    def probe(self, *, deadline: float) -> None:
        """A software key is always available."""

    def close(self) -> None:
        """Nothing to release."""


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the signing key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigurationError(f"{path}: the signing key must be ECDSA P-256")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Load a PEM or DER certificate; raises ``ConfigurationError`` when it cannot."""
    try:
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the certificate {path}: {exc}") from exc


def is_self_signed(certificate_der: bytes) -> bool:
    """True when the DER certificate names itself as its issuer (issuer == subject), as
    :func:`create_software_unit`'s development certificates do, or cannot be read: no
    trust service provider vouches for it."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        return True
    return certificate.issuer == certificate.subject


def software_unit_files(directory: Path, name: str) -> tuple[Path, Path]:
    """The key file and the certificate file of software unit ``name`` in ``directory``."""
    return directory / f"{name}.key.pem", directory / f"{name}.cert.pem"


def create_software_unit(
    directory: Path, *, name: str = "dev", key_id: str | None = None
) -> tuple[Path, Path | None]:
    """Write ``NAME.key.pem`` (mode 0600) and, for open systems, a self-signed ``NAME.cert.pem``.

    The certificate is plainly a development certificate: it is not issued by a trust
    service provider and is not valid for a registered cash register. Both files are on
    disk when this returns (a closed system's key is its signature unit: a power cut after
    its Startbeleg must not take it), and neither is ever overwritten.

    Returns:
        The key file and the certificate file (``None`` for a closed system).

    Raises:
        ValueError: ``name`` is not a unit id (it names files: no path may hide in it).
        FileExistsError: the key (or certificate) file exists already.
    """
    if not is_unit_id(name):
        raise ValueError(f"unit id {name!r}: {UNIT_ID_RULE}")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path = software_unit_files(directory, name)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    create_file(key_path, pem, mode=0o600)
    if key_id is not None:
        return key_path, None
    common_name = f"till-agent DEVELOPMENT unit {name} (NOT CERTIFIED)"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) | 1 << 62)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    create_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path

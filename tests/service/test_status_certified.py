"""``certified`` in ``/v1/status``: only a certificate issued to the unit by someone else
(a trust service provider) counts; a self-signed development certificate does not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import add_unit


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issued_unit(directory: Path, unit_id: str) -> UnitConfig:
    """A key and its certificate issued by a (test) certification authority, as files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"unit {unit_id}"))
        .issuer_name(_name("Test Trust Service CA"))
        .public_key(key.public_key())
        .serial_number(0x5EED)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_file, cert_file = directory / f"{unit_id}.key.pem", directory / f"{unit_id}.cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return UnitConfig(
        id=unit_id, kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
    )


def _unit_of(service: ReceiptService, register: str) -> dict[str, object]:
    status = ServiceBackend(service).status()
    [reg] = [r for r in status.registers if r.register_id == register]
    return reg.unit.model_dump()


class TestCertified:
    def test_a_self_signed_development_certificate_is_not_certified(
        self, service: ReceiptService
    ) -> None:
        """The unit of ``unit create-software`` (issuer == subject, not simulated): false."""
        assert _unit_of(service, "KASSE-1")["certified"] is False

    def test_a_certificate_issued_by_a_ca_is_certified(
        self, service: ReceiptService, registry: UnitRegistry, tmp_path: Path
    ) -> None:
        config = _issued_unit(tmp_path / "issued", "atrust")
        add_unit(service.db, registry, config)
        service.init_register(RegisterSetup("KASSE-2", ["atrust"]))
        assert _unit_of(service, "KASSE-2")["certified"] is True

    def test_a_closed_system_key_is_not_certified(
        self, bare_service: ReceiptService, registry: UnitRegistry, tmp_path: Path
    ) -> None:
        """AT0: a key id, no certificate."""
        from agent.signing import create_software_unit

        key_file, _ = create_software_unit(tmp_path / "closed", name="k", key_id="U:ATU12345678-K1")
        config = UnitConfig(
            id="k", kind="software", zda="AT0", key_file=key_file, key_id="U:ATU12345678-K1"
        )
        add_unit(bare_service.db, registry, config)
        bare_service.init_register(RegisterSetup("KASSE-3", ["k"]))
        assert _unit_of(bare_service, "KASSE-3")["certified"] is False

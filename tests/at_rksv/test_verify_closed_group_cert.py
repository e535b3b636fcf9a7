"""A closed system's receipts name their key by key id; a group certificate does not
stand in for it (agent/at_rksv/verify.py)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.at_rksv.verify import verify_dep
from agent.export import export_container, export_dep
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from factories import add_unit, sale
from storage import TillDB

KEY_ID = "U:ATU12345678-K1"


def _certificate_for(key_file: Path) -> str:
    """A self-signed certificate of the closed unit's own key, base64 DER."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a closed system's")])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x12AB)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def test_a_group_certificate_does_not_vouch_for_an_unknown_key_id(
    db: TillDB, registry: UnitRegistry, clock: Any, tmp_path: Path
) -> None:
    """A closed register's own export verifies. With its key id missing from the crypto
    container, its receipts are refused even when the DEP group carries a certificate
    of the very key that signed them."""
    key_file, _ = create_software_unit(tmp_path / "units", name="k", key_id=KEY_ID)
    config = UnitConfig(id="k", kind="software", zda="AT0", key_file=key_file, key_id=KEY_ID)
    add_unit(db, registry, config)
    service = ReceiptService(db, registry, clock=clock)
    service.init_register(RegisterSetup("KASSE-1", ["k"]))
    service.issue(sale())
    out = io.StringIO()
    export_dep(db, "KASSE-1", out)
    dep = json.loads(out.getvalue())
    container = json.loads(export_container(db, "KASSE-1"))
    assert verify_dep(dep, container).ok

    certificate = _certificate_for(key_file)
    dep["Belege-Gruppe"][0]["Signaturzertifikat"] = certificate
    container["certificateOrPublicKeyMap"] = {  # the certificate is known; the key id is not
        "12ab": {
            "id": "12ab",
            "signatureDeviceType": "CERTIFICATE",
            "signatureCertificateOrPublicKey": certificate,
        }
    }
    report = verify_dep(dep, container)
    assert {(f.receipt, f.rule) for f in report.findings} == {
        (receipt_id, "public-key-missing") for receipt_id in ("1", "2")
    }

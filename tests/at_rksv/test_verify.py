"""Our DEP verifier against the ztp corpus, the official scenarios and the e2e DEPs.

Acceptance criterion: every ztp case without an expected exception verifies, every
other case is rejected, for the right reason (EXPECTED_RULE) and at the right receipt.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.at_rksv.dep import load_container, load_dep
from agent.at_rksv.encoding import b64url, b64url_decode
from agent.at_rksv.verify import CONTAINER, Finding, Report, verify_dep, verify_files
from factories import require_vectors

VECTORS = require_vectors(module=True)  # all corpus cases: else the module is skipped
CASES = VECTORS / "ztp" / "cases"
INDEX: list[dict[str, Any]] = json.loads((CASES / "index.json").read_text(encoding="utf-8"))

# ztp exception name -> our rule name: a case must be rejected for this reason.
EXPECTED_RULE = {
    "AlgorithmMismatchException": "algorithm-mismatch",
    "CertSerialInvalidException": "certificate-serial-invalid",
    "CertSerialMismatchException": "certificate-serial-mismatch",
    "CertificateChainBrokenException": "certificate-chain-broken",
    "CertificateSerialCollisionException": "certificate-serial-collision",
    "ChainingException": "chaining-invalid",
    "ChangingRegisterIdException": "register-id-changed",
    "ChangingSystemTypeException": "system-type-changed",
    "DecreasingDateException": "date-decreasing",
    "DuplicateReceiptIdException": "receipt-id-duplicate",
    "InvalidCertificateProviderException": "certificate-provider-invalid",
    "InvalidChainingOnInitialReceiptException": "start-receipt-chaining",
    "InvalidSignatureException": "signature-invalid",
    "InvalidTurnoverCounterException": "turnover-counter-invalid",
    "MalformedReceiptException": "malformed-receipt",
    "NoCertificateGivenException": "certificate-missing",
    "NoPublicKeyException": "public-key-missing",
    "NoRestoreReceiptAfterSignatureSystemFailureException": "sammelbeleg-missing",
    "NonstandardTypeOnInitialReceiptException": "start-receipt-type",
    "NonzeroTurnoverOnInitialReceiptException": "start-receipt-turnover",
    "SignatureSystemFailedOnInitialReceiptException": "start-receipt-unsigned",
    "UntrustedCertificateException": "certificate-untrusted",
    "UnknownAlgorithmException": "algorithm-unknown",
}
UNKNOWN_RECEIPT = "Unknown Receipt"  # ztp's name for a receipt without a Belegnummer


def _verify(directory: Path) -> Report:
    return verify_files(
        directory / "dep-export.json", directory / "cryptographicMaterialContainer.json"
    )


def _param(case: dict[str, Any]) -> Any:
    return pytest.param(case, id=case["dir"])


def _findings(report: Report, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule == rule]


POSITIVE = [_param(c) for c in INDEX if c["expectedException"] is None]
NEGATIVE = [_param(c) for c in INDEX if c["expectedException"] is not None]
AT_RECEIPT = [_param(c) for c in INDEX if c["exceptionReceipt"] is not None]
OFFICIAL = sorted((CASES / "official_scenarios").glob("*/TESTSUITE_TEST_SZENARIO_*"))


def test_corpus_is_complete() -> None:
    """154 frozen cases and 16 official scenario DEPs; every exception has a rule."""
    assert len(INDEX) == 154
    assert len(OFFICIAL) == 16
    assert {c["expectedException"] for c in INDEX} - {None} == set(EXPECTED_RULE)


class TestZtpCorpus:
    @pytest.mark.parametrize("case", POSITIVE)
    def test_valid_case_verifies(self, case: dict[str, Any]) -> None:
        report = _verify(CASES / case["dir"])
        assert report.ok, report.findings
        assert report.receipts > 0

    @pytest.mark.parametrize("case", NEGATIVE)
    def test_broken_case_is_rejected_for_the_right_rule(self, case: dict[str, Any]) -> None:
        report = _verify(CASES / case["dir"])
        assert not report.ok
        rule = EXPECTED_RULE[case["expectedException"]]
        assert _findings(report, rule), report.findings

    @pytest.mark.parametrize("case", AT_RECEIPT)
    def test_finding_names_the_receipt(self, case: dict[str, Any]) -> None:
        report = _verify(CASES / case["dir"])
        named = {f.receipt for f in _findings(report, EXPECTED_RULE[case["expectedException"]])}
        if case["exceptionReceipt"] == UNKNOWN_RECEIPT:
            assert all(name and name.startswith("eyJ") for name in named), named
        else:
            assert case["exceptionReceipt"] in named


@pytest.mark.parametrize("directory", OFFICIAL, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_official_scenario_verifies(directory: Path) -> None:
    report = _verify(directory)
    assert report.ok, report.findings
    assert report.receipts >= 76


class TestEndToEnd:
    @pytest.mark.parametrize("mode", ["e2e_open", "e2e_closed"])
    def test_e2e_dep_verifies(self, mode: str) -> None:
        """Includes an outage run with its Sammelbeleg and, for open, a group certificate."""
        report = _verify(VECTORS / mode)
        assert report.ok, report.findings
        assert report.receipts == 11

    @pytest.mark.parametrize("mode", ["e2e_open", "e2e_closed"])
    def test_streams_from_the_readers(self, mode: str) -> None:
        directory = VECTORS / mode
        with (
            (directory / "dep-export.json").open("rb") as dep,
            (directory / "cryptographicMaterialContainer.json").open("rb") as container,
        ):
            report = verify_dep(load_dep(dep), load_container(container))
        assert report.ok, report.findings

    def test_tampered_signature_is_found_and_breaks_the_chain(self) -> None:
        """A changed signature fails there, and the next receipt's chaining value too."""
        dep, container = _e2e("e2e_open")
        receipts = dep["Belege-Gruppe"][0]["Belege-kompakt"]
        head, signature = receipts[2].rsplit(".", 1)
        raw = bytearray(b64url_decode(signature))
        raw[0] ^= 1
        receipts[2] = f"{head}.{b64url(bytes(raw))}"
        report = verify_dep(dep, container)
        assert {(f.receipt, f.rule) for f in report.findings} == {
            ("B0003", "signature-invalid"),
            ("B0004", "chaining-invalid"),
        }

    def test_characters_outside_base64url_are_malformed(self) -> None:
        """A trailing newline would still decode leniently; the verifier rejects it."""
        dep, container = _e2e("e2e_closed")
        dep["Belege-Gruppe"][0]["Belege-kompakt"][-1] += "\n"
        report = verify_dep(dep, container)
        assert [(f.receipt, f.rule) for f in report.findings] == [("B0011", "malformed-receipt")]

    def test_without_aes_key_the_counter_is_not_checked(self) -> None:
        dep, container = _e2e("e2e_closed")
        del container["base64AESKey"]
        assert verify_dep(dep, container).ok

    def test_missing_dep_key_is_a_finding(self) -> None:
        dep, container = _e2e("e2e_open")
        del dep["Belege-Gruppe"][0]["Zertifizierungsstellen"]
        report = verify_dep(dep, container)
        assert [f.rule for f in report.findings] == ["malformed-dep"]
        assert "Zertifizierungsstellen" in report.findings[0].message

    def test_broken_container_is_a_finding(self) -> None:
        """A container problem is reported at the container, not at the DEP."""
        dep, container = _e2e("e2e_open")
        container["base64AESKey"] = "AAAA"
        report = verify_dep(dep, container)
        assert [(f.receipt, f.rule) for f in report.findings] == [
            (CONTAINER, "malformed-container")
        ]

    def test_invalid_json_file_is_a_finding(self, tmp_path: Path) -> None:
        (tmp_path / "dep.json").write_text("{", encoding="utf-8")
        container = VECTORS / "e2e_open" / "cryptographicMaterialContainer.json"
        report = verify_files(tmp_path / "dep.json", container)
        assert [(f.receipt, f.rule) for f in report.findings] == [(None, "malformed-dep")]


def _e2e(mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    directory = VECTORS / mode
    dep = json.loads((directory / "dep-export.json").read_text(encoding="utf-8"))
    container = json.loads(
        (directory / "cryptographicMaterialContainer.json").read_text(encoding="utf-8")
    )
    return dep, container


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePublicKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    serial: int,
) -> bytes:
    start = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 30))
    )
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _container_entry(der: bytes) -> tuple[str, dict[str, str]]:
    serial = f"{x509.load_der_x509_certificate(der).serial_number:x}"
    value = base64.b64encode(der).decode()
    entry = {"id": serial, "signatureDeviceType": "CERTIFICATE"}
    return serial, {**entry, "signatureCertificateOrPublicKey": value}


class TestCertificateChains:
    """The e2e_open receipts, signed by a leaf certificate that a test CA issued."""

    SERIAL = 0x1A2B3C4D5E6F7081

    @pytest.fixture(name="pki")
    def _pki(self) -> dict[str, bytes]:
        expected = json.loads((VECTORS / "e2e_open" / "expected.json").read_text("utf-8"))
        unit_key = serialization.load_pem_private_key(
            expected["privateKeyPem"].encode(), password=None
        )
        assert isinstance(unit_key, ec.EllipticCurvePrivateKey)
        root_key, other_key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        return {
            "root": _certificate("Test Root", root_key.public_key(), "Test Root", root_key, 7),
            "other": _certificate("Test Root", other_key.public_key(), "Test Root", other_key, 8),
            "leaf": _certificate("Unit", unit_key.public_key(), "Test Root", root_key, self.SERIAL),
        }

    @staticmethod
    def _verify(leaf: bytes, chain: list[bytes], trusted: list[bytes]) -> Report:
        dep, container = _e2e("e2e_open")
        group = dep["Belege-Gruppe"][0]
        group["Signaturzertifikat"] = base64.b64encode(leaf).decode()
        group["Zertifizierungsstellen"] = [base64.b64encode(c).decode() for c in chain]
        container["certificateOrPublicKeyMap"] = dict(_container_entry(c) for c in trusted)
        return verify_dep(dep, container)

    def test_chain_to_a_trusted_root_verifies(self, pki: dict[str, bytes]) -> None:
        report = self._verify(pki["leaf"], [pki["root"]], [pki["root"]])
        assert report.ok, report.findings

    def test_issuer_in_the_container_is_enough(self, pki: dict[str, bytes]) -> None:
        """Without Zertifizierungsstellen the leaf is checked against container CAs."""
        assert self._verify(pki["leaf"], [], [pki["root"]]).ok

    def test_unknown_root_is_untrusted(self, pki: dict[str, bytes]) -> None:
        report = self._verify(pki["leaf"], [pki["root"]], [pki["other"]])
        assert [f.rule for f in report.findings] == ["certificate-untrusted"]

    def test_wrong_issuer_breaks_the_chain(self, pki: dict[str, bytes]) -> None:
        """Same issuer name, different key: the leaf signature does not verify."""
        report = self._verify(pki["leaf"], [pki["other"]], [pki["root"]])
        assert [f.rule for f in report.findings] == ["certificate-chain-broken"]
        assert report.findings[0].receipt == "B0001"

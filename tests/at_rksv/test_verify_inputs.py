"""Malformed and unreadable inputs to the verifier (agent.at_rksv.verify).

Whatever the DEP or the crypto container hold, ``verify`` ends in findings (exit 1,
"INVALID") that name the file at fault, never in a traceback.
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner, Result

from agent.at_rksv.dep import load_container, stream_dep
from agent.at_rksv.encoding import b64url, b64url_decode
from agent.at_rksv.verify import CONTAINER, Report, verify_dep, verify_files
from agent.cli import app
from factories import require_vectors

VECTORS = require_vectors(module=True)  # every test reads e2e files: else skipped
DEP = VECTORS / "e2e_open" / "dep-export.json"
CONTAINER_FILE = VECTORS / "e2e_open" / "cryptographicMaterialContainer.json"
DEPTH = 100_000
DEEP = "[" * DEPTH + "]" * DEPTH
LONG_NUMBER = "1" * 5000  # int() takes 4300 digits

# container text -> what the finding says
BROKEN_CONTAINERS = {
    "not-json": ("# not a container\n", "crypto container is not valid JSON"),
    "deep": (DEEP, "nested too deeply"),
    "deep-value": (f'{{"certificateOrPublicKeyMap": {DEEP}}}', "nested too deeply"),
    "long-number": (f'{{"base64AESKey": {LONG_NUMBER}}}', "a number has more than 4300 digits"),
}


MEMORY = Path("/proc/self/mem")  # opens, but reading at offset 0 fails (EIO)
NOT_UTF8 = '{"Belege-Gruppe": "\u00e9"}'.encode("latin-1")
needs_proc = pytest.mark.skipif(not MEMORY.exists(), reason="needs /proc/self/mem")


def _unreadable(tmp_path: Path, kind: str) -> Path:
    """A path that cannot be read: a directory, a missing file, or an I/O error."""
    if kind == "directory":
        return tmp_path
    if kind == "missing":
        return tmp_path / "missing.json"
    if kind == "io-error":
        if not MEMORY.exists():
            pytest.skip("needs /proc/self/mem")
        return MEMORY
    assert kind == "no-permission"
    if os.geteuid() == 0:
        pytest.skip("root reads files without permission")
    path = _file(tmp_path, "{}")
    path.chmod(0)
    return path


UNREADABLE = ["directory", "missing", "io-error", "no-permission"]

P256 = bytes.fromhex("06082a8648ce3d030107")  # the OID 1.2.840.10045.3.1.7 in DER
# same length, so the DER stays well formed: a curve cryptography does not support, and
# P-192, on which the P-256 point is not
OTHER_CURVES = {
    "unsupported-curve": (P256[:-1] + b"\x02", "Curve 1.2.840.10045.3.1.2 is not supported"),
    "point-not-on-curve": (P256[:-1] + b"\x01", "Invalid key"),
}


def _on_curve(der: bytes, curve: bytes) -> bytes:
    assert der.count(P256) == 1
    return der.replace(P256, curve)


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def _json_file(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, serial: int) -> bytes:
    """A self-signed certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    start = dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365 * 30))
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class _FailingFile(io.RawIOBase):
    """Gives ``data`` up to ``size`` bytes, then fails as a bad disk does."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data, self._size, self._pos = data, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            raise OSError(errno.EIO, "Input/output error")
        count = min(len(buffer), self._size - self._pos)
        buffer[:count] = self._data[self._pos : self._pos + count]
        self._pos += count
        return count


def _places(report: Report) -> list[tuple[str | None, str]]:
    return [(f.receipt, f.rule) for f in report.findings]


def _file(tmp_path: Path, text: str, name: str = "input.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _verify(*args: str | Path) -> Result:
    runner = CliRunner()
    return runner.invoke(app, ["verify", *map(str, args)], prog_name="till-agent")


def _flat(text: str) -> str:
    """Rich wraps at 80 columns: make every run of whitespace one space."""
    return " ".join(text.split())


class TestContainerFindings:
    @pytest.mark.parametrize("name", BROKEN_CONTAINERS)
    def test_broken_container_is_a_finding_at_the_container(
        self, tmp_path: Path, name: str
    ) -> None:
        """One malformed-container finding, at the container, saying what is wrong."""
        text, message = BROKEN_CONTAINERS[name]
        report = verify_files(DEP, _file(tmp_path, text))
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert message in report.findings[0].message

    @pytest.mark.parametrize("name", BROKEN_CONTAINERS)
    def test_cli_names_the_container(self, tmp_path: Path, name: str) -> None:
        """``verify dep.json broken.json`` exits 1 pointing at the container, no traceback."""
        text, message = BROKEN_CONTAINERS[name]
        result = _verify(DEP, _file(tmp_path, text))
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        out = _flat(result.stdout)
        assert "malformed-container at (container): " in out
        assert message in out
        assert "(DEP)" not in out
        assert "INVALID" in out

    @pytest.mark.parametrize("document", [[], "x", 1, None], ids=repr)
    def test_parsed_container_that_is_no_object(self, document: object) -> None:
        """verify_dep takes parsed JSON: any JSON value, not only an object."""
        report = verify_dep(_json_file(DEP), document)  # type: ignore[arg-type]
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert "expected a JSON object" in report.findings[0].message


class TestUnreadableFiles:
    @pytest.mark.parametrize("kind", UNREADABLE)
    def test_unreadable_container_is_a_finding(self, tmp_path: Path, kind: str) -> None:
        report = verify_files(DEP, _unreadable(tmp_path, kind))
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert "crypto container cannot be read" in report.findings[0].message

    @pytest.mark.parametrize("kind", UNREADABLE)
    def test_unreadable_dep_is_a_finding(self, tmp_path: Path, kind: str) -> None:
        report = verify_files(_unreadable(tmp_path, kind), CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "DEP export cannot be read" in report.findings[0].message

    def test_read_error_in_the_middle_of_the_dep_keeps_what_was_checked(self) -> None:
        """The receipts read before the error are counted and checked."""
        data = DEP.read_bytes()
        with CONTAINER_FILE.open("rb") as fp:
            container = load_container(fp)
        failing = _FailingFile(data, len(data) * 2 // 3)
        report = verify_dep(stream_dep(io.BufferedReader(failing), chunk=256), container)
        assert _places(report) == [(None, "malformed-dep")]
        assert "DEP export cannot be read: [Errno 5]" in report.findings[0].message
        assert 0 < report.receipts < 11

    def test_container_not_in_utf8_is_a_finding(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.json"
        path.write_bytes(NOT_UTF8)
        report = verify_files(DEP, path)
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert "not valid JSON" in report.findings[0].message

    def test_dep_not_in_utf8_is_a_finding(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.json"
        path.write_bytes(NOT_UTF8)
        report = verify_files(path, CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "not valid JSON" in report.findings[0].message

    @needs_proc
    @pytest.mark.parametrize("faulty", ["dep", "container"])
    def test_cli_read_error_is_a_finding(self, faulty: str) -> None:
        """``verify /proc/self/mem container.json`` (and the other way round): exit 1."""
        dep, container = (MEMORY, CONTAINER_FILE) if faulty == "dep" else (DEP, MEMORY)
        result = _verify(dep, container)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        where = "(DEP): DEP export" if faulty == "dep" else "(container): crypto container"
        assert f"at {where} cannot be read: [Errno 5]" in _flat(result.stdout)

    @needs_proc
    def test_cli_json_names_the_container(self) -> None:
        """``--json`` carries the same finding: receipt "(container)"."""
        result = _verify(DEP, MEMORY, "--json")
        assert result.exit_code == 1, result.output
        body = json.loads(result.stdout)
        assert body["ok"] is False
        assert [(f["receipt"], f["rule"]) for f in body["findings"]] == [
            ("(container)", "malformed-container")
        ]


class TestCertificateKeys:
    """Certificates and keys that parse, but whose EC key cannot be used."""

    @pytest.mark.parametrize("curve", OTHER_CURVES)
    def test_container_certificate(self, curve: str) -> None:
        """The certificate parses; reading its key fails only later."""
        oid, message = OTHER_CURVES[curve]
        container = _json_file(CONTAINER_FILE)
        (entry,) = container["certificateOrPublicKeyMap"].values()
        der = base64.b64decode(entry["signatureCertificateOrPublicKey"])
        entry["signatureCertificateOrPublicKey"] = _b64(_on_curve(der, oid))
        report = verify_dep(_json_file(DEP), container)
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert f"public key unreadable: {message}" in report.findings[0].message

    def test_container_public_key_on_an_unsupported_curve(self) -> None:
        container = _json_file(VECTORS / "e2e_closed" / "cryptographicMaterialContainer.json")
        (entry,) = container["certificateOrPublicKeyMap"].values()
        der = base64.b64decode(entry["signatureCertificateOrPublicKey"])
        oid, message = OTHER_CURVES["unsupported-curve"]
        entry["signatureCertificateOrPublicKey"] = _b64(_on_curve(der, oid))
        report = verify_dep(_json_file(VECTORS / "e2e_closed" / "dep-export.json"), container)
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert f"public key unreadable: {message}" in report.findings[0].message

    @pytest.mark.parametrize("curve", OTHER_CURVES)
    def test_group_certificate(self, curve: str) -> None:
        """The DEP side shares the code: a malformed-dep finding at the first receipt."""
        oid, message = OTHER_CURVES[curve]
        dep = _json_file(DEP)
        group = dep["Belege-Gruppe"][0]
        der = base64.b64decode(group["Signaturzertifikat"])
        group["Signaturzertifikat"] = _b64(_on_curve(der, oid))
        report = verify_dep(dep, _json_file(CONTAINER_FILE))
        assert ("B0001", "malformed-dep") in _places(report)
        assert any(f"public key unreadable: {message}" in f.message for f in report.findings)

    @pytest.mark.parametrize("curve", OTHER_CURVES)
    def test_group_ca_whose_key_cannot_be_read_breaks_the_chain(self, curve: str) -> None:
        """The group certificate is not trusted itself, and its named CA has an unusable
        key: the chain is broken there."""
        oid, _ = OTHER_CURVES[curve]
        dep, container = _json_file(DEP), _json_file(CONTAINER_FILE)
        subject = x509.load_der_x509_certificate(
            base64.b64decode(dep["Belege-Gruppe"][0]["Signaturzertifikat"])
        ).issuer.rfc4514_string()
        ca = _certificate(subject.removeprefix("CN="), ec.generate_private_key(ec.SECP256R1()), 99)
        dep["Belege-Gruppe"][0]["Zertifizierungsstellen"] = [_b64(_on_curve(ca, oid))]
        trusted = {"id": "63", "signatureDeviceType": "CERTIFICATE"}
        container["certificateOrPublicKeyMap"] = {
            "63": {**trusted, "signatureCertificateOrPublicKey": _b64(ca)}
        }
        report = verify_dep(dep, container)
        assert ("B0001", "certificate-chain-broken") in _places(report)


class TestDepFindings:
    def test_deeply_nested_dep_value_is_a_finding(self, tmp_path: Path) -> None:
        """Nesting deeper than the decoder recurses, inside a value the stream decodes."""
        dep = _file(tmp_path, f'{{"x": {DEEP}, "Belege-Gruppe": []}}')
        report = verify_files(dep, CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "nested too deeply" in report.findings[0].message

    def test_long_number_in_the_dep_is_a_finding(self, tmp_path: Path) -> None:
        dep = _file(tmp_path, f'{{"x": {LONG_NUMBER}, "Belege-Gruppe": []}}')
        report = verify_files(dep, CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "a number has more than 4300 digits" in report.findings[0].message

    def test_long_decimal_serial_in_a_receipt_is_a_finding(self) -> None:
        """Field 11 of 5000 digits is no certificate's serial, hex or decimal."""
        dep = _json_file(DEP)
        receipts = dep["Belege-Gruppe"][0]["Belege-kompakt"]
        header, payload, signature = receipts[1].split(".")
        fields = b64url_decode(payload).decode().split("_")
        fields[11] = LONG_NUMBER
        receipts[1] = ".".join([header, b64url("_".join(fields).encode()), signature])
        report = verify_dep(dep, _json_file(CONTAINER_FILE))
        assert ("B0002", "certificate-serial-mismatch") in _places(report)

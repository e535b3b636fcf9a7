"""The DEP7 writer and reader and the crypto material container (agent.at_rksv.dep)."""

from __future__ import annotations

import base64
import io
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.at_rksv.dep import (
    CERTIFICATE,
    PUBLIC_KEY,
    DepFormatError,
    DepGroup,
    container_json,
    iter_dep,
    load_container,
    load_dep,
    read_container,
    stream_dep,
    write_dep,
)
from agent.signing.base import Identity
from factories import require_vectors

MODES = ("e2e_open", "e2e_closed")


def _vector(mode: str, name: str) -> Path:
    """A file of the e2e vectors (the test is skipped without them)."""
    return require_vectors() / mode / name


def _text(mode: str, name: str) -> str:
    return _vector(mode, name).read_text(encoding="utf-8")


def _document(groups: list[tuple[bytes | None, list[bytes], list[str]]]) -> str:
    """What json.dumps makes of the same groups: the reference for the streaming writer."""
    b64 = [(base64.b64encode(c or b"").decode(), cas, r) for c, cas, r in groups]
    return json.dumps(
        {
            "Belege-Gruppe": [
                {
                    "Signaturzertifikat": cert,
                    "Zertifizierungsstellen": [base64.b64encode(ca).decode() for ca in cas],
                    "Belege-kompakt": receipts,
                }
                for cert, cas, receipts in b64
            ]
        },
        indent=2,
        ensure_ascii=False,
    )


def _written(groups: list[DepGroup]) -> str:
    out = io.StringIO()
    write_dep(out, groups)
    return out.getvalue()


def _e2e(mode: str) -> tuple[bytes | None, list[str]]:
    pairs = list(iter_dep(json.loads(_text(mode, "dep-export.json"))))
    return pairs[0][0].certificate_der, [jws for _, jws in pairs]


class TestWriteDep:
    @pytest.mark.parametrize("mode", MODES)
    def test_e2e_export_is_byte_identical(self, mode: str) -> None:
        """Regrouping the receipts of the e2e DEP and streaming them gives the same bytes."""
        cert, receipts = _e2e(mode)
        assert _written([DepGroup(cert, (), iter(receipts))]) == _text(mode, "dep-export.json")

    @pytest.mark.parametrize("mode", MODES)
    def test_binary_handle_gets_utf8(self, mode: str) -> None:
        cert, receipts = _e2e(mode)
        out = io.BytesIO()
        write_dep(out, [DepGroup(cert, (), (r for r in receipts))])
        assert out.getvalue() == _vector(mode, "dep-export.json").read_bytes()

    def test_file_handles(self, tmp_path: Path) -> None:
        """Real files opened in text or binary mode get the same bytes."""
        cert, receipts = _e2e("e2e_open")
        with (tmp_path / "t.json").open("w", encoding="utf-8") as text_out:
            write_dep(text_out, [DepGroup(cert, (), receipts)])
        with (tmp_path / "b.json").open("wb") as binary_out:
            write_dep(binary_out, [DepGroup(cert, (), receipts)])
        expected = _vector("e2e_open", "dep-export.json").read_bytes()
        assert (tmp_path / "t.json").read_bytes() == expected
        assert (tmp_path / "b.json").read_bytes() == expected

    def test_several_groups_with_ca_certificates(self) -> None:
        cert, receipts = _e2e("e2e_open")
        groups = [(cert, [], receipts[:4]), (None, [b"ca-1", b"ca-2"], receipts[4:])]
        written = _written([DepGroup(c, tuple(cas), iter(r)) for c, cas, r in groups])
        assert written == _document(groups)

    @pytest.mark.parametrize(
        "groups",
        [
            pytest.param([], id="no-groups"),
            pytest.param([(None, [], [])], id="empty-group"),
            pytest.param([(b"cert", [b"ca"], []), (None, [], ["a.b.c"])], id="empty-receipts"),
        ],
    )
    def test_empty_lists_render_as_brackets(self, groups: list[Any]) -> None:
        """json.dumps(indent=2) writes [] for empty lists; so does the streaming writer."""
        assert _written([DepGroup(c, tuple(cas), r) for c, cas, r in groups]) == _document(groups)

    def test_non_ascii_is_written_as_is(self) -> None:
        assert _written([DepGroup(None, (), ["Kassa-Ö_\u20ac"])]) == _document(
            [(None, [], ["Kassa-Ö_\u20ac"])]
        )

    def test_memory_stays_bounded_for_many_receipts(self) -> None:
        """A generator of 50,000 receipts is written without holding them (about 15 MB)."""

        class Sink:
            size = 0

            def write(self, text: str) -> int:
                self.size += len(text)
                return len(text)

        def receipts() -> Iterator[str]:
            for number in range(50_000):
                yield f"eyJhbGciOiJFUzI1NiJ9.{number:0300d}.sig"

        sink = Sink()
        tracemalloc.start()
        try:
            write_dep(sink, [DepGroup(None, (), receipts())])  # type: ignore[arg-type]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sink.size > 15_000_000
        assert peak < 1_000_000


def _identity(mode: str) -> Identity:
    expected = json.loads(_text(mode, "expected.json"))
    key = serialization.load_pem_private_key(expected["privateKeyPem"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    zda = expected["suite"].removeprefix("R1-")
    cert, _ = _e2e(mode)
    return Identity("unit-1", zda, expected["certificateSerialField"], public_der, cert)


class TestContainer:
    @pytest.mark.parametrize("mode", MODES)
    def test_e2e_container_is_byte_identical(self, mode: str) -> None:
        """CERTIFICATE for the open unit, PUBLIC_KEY (SubjectPublicKeyInfo) for AT0."""
        expected = json.loads(_text(mode, "expected.json"))
        key = base64.b64decode(expected["base64AESKey"])
        written = container_json(key, [_identity(mode)])
        assert written == _text(mode, "cryptographicMaterialContainer.json")

    def test_open_unit_needs_a_certificate(self) -> None:
        unit = Identity("u", "AT1", "1a2b", b"key", None)
        with pytest.raises(ValueError, match="no certificate"):
            container_json(bytes(32), [unit])

    @pytest.mark.parametrize(
        ("mode", "kind"), [("e2e_open", CERTIFICATE), ("e2e_closed", PUBLIC_KEY)]
    )
    def test_read_container(self, mode: str, kind: str) -> None:
        with _vector(mode, "cryptographicMaterialContainer.json").open("rb") as fp:
            container = load_container(fp)
        identity = _identity(mode)
        entry = container.entries[identity.serial]
        assert entry.device_type == kind
        assert entry.der == (
            identity.certificate_der if kind == CERTIFICATE else identity.public_key_der
        )
        assert container.aes_key is not None
        assert len(container.aes_key) == 32

    def test_container_without_aes_key(self) -> None:
        assert read_container({"certificateOrPublicKeyMap": {}}).aes_key is None

    @pytest.mark.parametrize(
        ("document", "match"),
        [
            ({}, "certificateOrPublicKeyMap"),
            ({"base64AESKey": "AAAA", "certificateOrPublicKeyMap": {}}, "32 bytes"),
            ({"base64AESKey": "%%", "certificateOrPublicKeyMap": {}}, "base64AESKey"),
            ({"certificateOrPublicKeyMap": {"a": {"id": "b"}}}, "signatureDeviceType"),
            (
                {
                    "certificateOrPublicKeyMap": {
                        "a": {
                            "id": "b",
                            "signatureDeviceType": "PUBLIC_KEY",
                            "signatureCertificateOrPublicKey": "",
                        }
                    }
                },
                "differs",
            ),
            ([], "JSON object"),
        ],
    )
    def test_broken_container(self, document: Any, match: str) -> None:
        with pytest.raises(DepFormatError, match=match):
            read_container(document)


class TestReadDep:
    def test_pairs_share_their_group(self) -> None:
        cert, receipts = _e2e("e2e_open")
        document = json.loads(_document([(cert, [], receipts[:3]), (None, [b"ca"], receipts[3:])]))
        pairs = list(iter_dep(document))
        assert [jws for _, jws in pairs] == receipts
        first, second = pairs[0][0], pairs[-1][0]
        assert all(group is first for group, _ in pairs[:3])
        assert all(group is second for group, _ in pairs[3:])
        assert first.certificate_der == cert
        assert second.certificate_der is None
        assert second.ca_certificates == (b"ca",)

    @pytest.mark.parametrize("mode", ["r", "rb"])
    def test_load_from_handles(self, mode: str) -> None:
        with _vector("e2e_closed", "dep-export.json").open(mode) as fp:
            pairs = list(load_dep(fp))
        assert [jws for _, jws in pairs] == _e2e("e2e_closed")[1]

    def test_legacy_certificate_key_is_accepted(self) -> None:
        group = {
            "Signatur- bzw. Siegelzertifikat": "",
            "Zertifizierungsstellen": [],
            "Belege-kompakt": ["x"],
        }
        assert [jws for _, jws in iter_dep({"Belege-Gruppe": [group]})] == ["x"]

    @pytest.mark.parametrize(
        ("document", "match"),
        [
            ({}, "missing key 'Belege-Gruppe'"),
            ({"Belege-Gruppe": {}}, "expected list"),
            (
                {"Belege-Gruppe": [{"Signaturzertifikat": "", "Belege-kompakt": []}]},
                r"Belege-Gruppe\[0\]: missing key 'Zertifizierungsstellen'",
            ),
            (
                {"Belege-Gruppe": [{"Zertifizierungsstellen": [], "Belege-kompakt": []}]},
                "missing key 'Signaturzertifikat'",
            ),
            (
                {"Belege-Gruppe": [{"Signaturzertifikat": "", "Zertifizierungsstellen": []}]},
                "missing key 'Belege-kompakt'",
            ),
            (
                {
                    "Belege-Gruppe": [
                        {
                            "Signaturzertifikat": "#",
                            "Zertifizierungsstellen": [],
                            "Belege-kompakt": [],
                        }
                    ]
                },
                "not valid base64",
            ),
            (
                {
                    "Belege-Gruppe": [
                        {
                            "Signaturzertifikat": "",
                            "Zertifizierungsstellen": [],
                            "Belege-kompakt": [3],
                        }
                    ]
                },
                r"Belege-kompakt\[0\]: expected a string",
            ),
        ],
    )
    def test_broken_dep_names_the_element(self, document: Any, match: str) -> None:
        with pytest.raises(DepFormatError, match=match):
            list(iter_dep(document))

    def test_invalid_json(self) -> None:
        with pytest.raises(DepFormatError, match="not valid JSON"):
            list(load_dep(io.StringIO("{")))


class TestBrokenJson:
    """Both whole-document readers raise DepFormatError for any broken JSON."""

    DEEP = "[" * 100_000 + "]" * 100_000

    def test_deep_nesting_in_a_dep(self) -> None:
        with pytest.raises(DepFormatError, match="DEP export is not valid JSON: nested too"):
            load_dep(io.StringIO(self.DEEP))

    def test_deep_nesting_in_a_container(self) -> None:
        with pytest.raises(DepFormatError, match="container is not valid JSON: nested too"):
            load_container(io.BytesIO(self.DEEP.encode()))

    def test_long_number_in_a_dep(self) -> None:
        with pytest.raises(DepFormatError, match="a number has more than 4300 digits"):
            load_dep(io.StringIO("1" * 5000))

    def test_long_number_across_chunks_of_a_streamed_dep(self) -> None:
        """The number is cut by chunk boundaries before it is too long: still an error."""
        document = '{"x": ' + "1" * 5000 + ', "Belege-Gruppe": []}'
        with pytest.raises(DepFormatError, match="a number has more than 4300 digits"):
            list(stream_dep(io.StringIO(document), chunk=1000))

    def test_long_number_in_a_container(self) -> None:
        with pytest.raises(DepFormatError, match="a number has more than 4300 digits"):
            load_container(io.StringIO('{"base64AESKey": ' + "1" * 5000 + "}"))

    @pytest.mark.parametrize("text", ["", "{} {}", '{"certificateOrPublicKeyMap": {}'])
    def test_container_that_is_not_one_document(self, text: str) -> None:
        with pytest.raises(DepFormatError, match="crypto container is not valid JSON"):
            load_container(io.StringIO(text))

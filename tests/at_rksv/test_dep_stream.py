"""Reading a DEP export as a stream (agent.at_rksv.dep.stream_dep, jsonstream)."""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.at_rksv import jsonstream
from agent.at_rksv.dep import (
    CERT,
    CHAIN,
    GROUPS,
    RECEIPTS,
    DepFormatError,
    DepGroup,
    load_container,
    load_dep,
    stream_dep,
    write_dep,
)
from agent.at_rksv.verify import verify_dep
from factories import VECTORS

# without the vectors one placeholder stands for the corpus: the fixture skips (or fails) it
DEPS = sorted(p for p in VECTORS.rglob("*.json") if p.name.startswith("dep")) or [VECTORS]


def _pairs(items: Iterator[tuple[DepGroup, str]]) -> list[tuple[bytes | None, str]]:
    return [(group.certificate_der, jws) for group, jws in items]


def _stream(document: Any, chunk: int = 1 << 20) -> list[tuple[bytes | None, str]]:
    data = json.dumps(document).encode() if not isinstance(document, bytes) else document
    return _pairs(_streamed(io.BytesIO(data), chunk))


def _streamed(fp: io.BytesIO, chunk: int) -> Iterator[tuple[DepGroup, str]]:
    return stream_dep(fp, chunk=chunk)


def _group(*receipts: str, first: str = CERT) -> dict[str, Any]:
    keys = [first, CHAIN, RECEIPTS] if first != RECEIPTS else [RECEIPTS, CERT, CHAIN]
    values = {CERT: "", CHAIN: [], RECEIPTS: list(receipts)}
    return {key: values[key] for key in keys}


@pytest.mark.usefixtures("vectors")
def test_the_corpus_exists() -> None:
    assert len(DEPS) > 150


@pytest.mark.usefixtures("vectors")
@pytest.mark.parametrize("path", DEPS, ids=lambda p: str(p.relative_to(VECTORS)))
def test_every_dep_of_the_vectors_verifies_the_same_streamed(path: Path) -> None:
    """Streamed in 256 KiB chunks and in 7-byte chunks (every boundary case in the middle of
    strings, numbers and keys), each DEP of the corpus gives the report of the whole
    document, finding by finding."""
    container_path = path.with_name("cryptographicMaterialContainer.json")
    with container_path.open("rb") as container_file, path.open("rb") as dep_file:
        container = load_container(container_file)
        whole = verify_dep(load_dep(dep_file), container)
    for chunk in (1 << 18, 7):
        streamed = verify_dep(_streamed(io.BytesIO(path.read_bytes()), chunk), container)
        assert streamed.receipts == whole.receipts
        assert streamed.findings == whole.findings


class TestStructure:
    def test_groups_and_receipts_in_order(self) -> None:
        document = {GROUPS: [_group("a", "b"), _group(), _group("c")]}
        assert _stream(document, chunk=3) == [(None, "a"), (None, "b"), (None, "c")]

    def test_receipts_before_the_certificate_are_held_until_the_group_ends(self) -> None:
        document = {GROUPS: [_group("a", "b", first=RECEIPTS)]}
        assert _stream(document) == [(None, "a"), (None, "b")]

    def test_other_keys_are_skipped_whatever_they_hold(self) -> None:
        document = {"x": [1, {"y": 2.5e3}], GROUPS: [_group("a") | {"z": None}], "w": True}
        assert _stream(document, chunk=2) == [(None, "a")]

    def test_encodings_json_accepts(self) -> None:
        """UTF-8 with a BOM and UTF-16 are read, as json.load reads bytes."""
        text = json.dumps({GROUPS: [_group("Kassa-Ö")]}, ensure_ascii=False)
        for data in ("\ufeff".encode() + text.encode(), text.encode("utf-16")):
            assert _stream(data, chunk=5) == [(None, "Kassa-Ö")]

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            (b"[]", "expected a JSON object"),
            (b"{}", "missing key 'Belege-Gruppe'"),
            (b'{"Belege-Gruppe": {}}', "expected list"),
            (b'{"Belege-Gruppe": [], "Belege-Gruppe": []}', "appears twice"),
            (b'{"Belege-Gruppe": [1]}', "Belege-Gruppe[0]: expected a JSON object"),
            (b'{"Belege-Gruppe": []} x', "extra data"),
            (b'{"Belege-Gruppe": [}', "Belege-Gruppe[0]: expected a JSON object"),
            (b'{"Belege-Gruppe": [], }', "not valid JSON"),
            (b'{"Belege-Gruppe": [{"a": "', "not valid JSON"),
            (b"\xff\xfe\x00", "not valid JSON"),
        ],
    )
    def test_a_broken_document_is_a_format_error(self, document: bytes, message: str) -> None:
        with pytest.raises(DepFormatError, match=re.escape(message)):
            _stream(document, chunk=4)

    def test_a_broken_receipt_is_found_where_it_is(self) -> None:
        """Receipts of a streamed group before the broken one are read first."""
        document = {GROUPS: [{CERT: "", CHAIN: [], RECEIPTS: ["a", 7, "b"]}]}
        items = _streamed(io.BytesIO(json.dumps(document).encode()), 4)
        assert next(items)[1] == "a"
        with pytest.raises(DepFormatError, match=r"Belege-kompakt\[1\]: expected a string"):
            next(items)

    def test_a_broken_document_is_not_read_to_its_end(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A value that never ends is an error once it passes the longest value a DEP
        may hold, not after the whole rest of the file is in memory."""
        monkeypatch.setattr(jsonstream, "MAX_VALUE", 1000)
        data = b'{"Belege-Gruppe": [{"Signaturzertifikat": "' + b"A" * 100_000
        read: list[int] = []
        with pytest.raises(DepFormatError, match="not valid JSON"):
            list(stream_dep(io.BytesIO(data), chunk=256, on_read=read.append))
        assert sum(read) < 2000

    def test_a_certificate_after_the_streamed_receipts_is_refused(self) -> None:
        document = {GROUPS: [{CERT: "", CHAIN: [], RECEIPTS: ["a"], CERT + " ": 1}]}
        assert _stream(document) == [(None, "a")]  # an unknown key after them is fine
        late = b'{"Belege-Gruppe": [{"%s": "", "%s": [], "%s": [], "%s": ""}]}' % (
            CERT.encode(),
            CHAIN.encode(),
            RECEIPTS.encode(),
            CERT.encode(),
        )
        with pytest.raises(DepFormatError, match="after 'Belege-kompakt'"):
            _stream(late)


def test_memory_stays_bounded_for_many_receipts(tmp_path: Path) -> None:
    """50,000 receipts (15 MB) are read holding about one chunk, where the whole-document
    reader holds them all."""
    path = tmp_path / "dep.json"

    def receipts() -> Iterator[str]:
        for number in range(50_000):
            yield f"eyJhbGciOiJFUzI1NiJ9.{number:0300d}.sig"

    with path.open("w", encoding="utf-8") as out:
        write_dep(out, [DepGroup(None, (), receipts())])
    read: list[int] = []

    def peak(reader: Any) -> int:
        tracemalloc.start()
        try:
            count = 0
            with path.open("rb") as fp:
                for _ in reader(fp):
                    count += 1
            assert count == 50_000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed = peak(lambda fp: stream_dep(fp, on_read=read.append))
    whole = peak(load_dep)
    assert sum(read) == path.stat().st_size  # progress sees every byte
    assert streamed < 2_000_000
    assert whole > 15_000_000


@pytest.mark.parametrize("read", [load_dep, stream_dep], ids=["loaded", "streamed"])
@pytest.mark.parametrize("certificate_first", [False, True], ids=["receipts-first", "cert-first"])
def test_a_group_naming_its_receipts_twice_is_refused(read: Any, certificate_first: bool) -> None:
    """A second ``Belege-kompakt`` in one group would hide the first from the verifier
    (JSON parsers keep the last): the export is malformed, whatever the order."""
    receipts = '"Belege-kompakt": ["a.b.c"]'
    certificate = '"Signaturzertifikat": "", "Zertifizierungsstellen": []'
    members = (
        [certificate, receipts, receipts]
        if certificate_first
        else [
            receipts,
            certificate,
            receipts,
        ]
    )
    text = '{"Belege-Gruppe": [{' + ", ".join(members) + "}]}"
    with pytest.raises(DepFormatError, match=r"appears twice|after"):
        list(read(io.StringIO(text)))


@pytest.mark.parametrize("read", [load_dep, stream_dep], ids=["loaded", "streamed"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_constant_that_is_not_json_is_refused(read: Any, constant: str) -> None:
    """Python's json reads NaN and the infinities; a DEP holding one is no JSON document."""
    text = '{"Belege-Gruppe": [], "x": ' + constant + "}"
    with pytest.raises(DepFormatError, match="not a JSON value"):
        list(read(io.StringIO(text)))

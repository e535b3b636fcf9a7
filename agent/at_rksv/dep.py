"""The DEP7 export and the crypto material container (reference/rksv.md section 7).

:func:`write_dep` streams a DEP export: it produces exactly the bytes of
``json.dumps(document, indent=2, ensure_ascii=False)`` (no trailing newline) while
holding only one receipt in memory, so a register with a million receipts can be
exported through a generator. :func:`container_json` writes the
``cryptographicMaterialContainer.json`` that the BMF Prueftool and our verifier read.

The readers (:func:`iter_dep`, :func:`load_dep`, :func:`read_container`) check the
structure and raise :class:`DepFormatError` naming the missing or broken element.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, cast

from agent.at_rksv import jsonstream
from agent.at_rksv.encoding import b64, b64_decode
from agent.at_rksv.jsonstream import JsonReader, JsonStreamError, json_error
from agent.errors import TillAgentError
from agent.signing.base import Identity
from storage.canonical import DuplicateKey, unique_keys

__all__ = [
    "CERTIFICATE",
    "PUBLIC_KEY",
    "ContainerEntry",
    "CryptoContainer",
    "DepFormatError",
    "DepGroup",
    "container_json",
    "iter_dep",
    "load_container",
    "load_dep",
    "read_container",
    "stream_dep",
    "write_dep",
]

GROUPS = "Belege-Gruppe"
CERT = "Signaturzertifikat"
CERT_LEGACY = "Signatur- bzw. Siegelzertifikat"
CHAIN = "Zertifizierungsstellen"
RECEIPTS = "Belege-kompakt"
CERTIFICATE = "CERTIFICATE"
PUBLIC_KEY = "PUBLIC_KEY"

_GROUP_INDENT = " " * 4
_KEY_INDENT = " " * 6
_ITEM_INDENT = " " * 8


class DepFormatError(TillAgentError, ValueError):
    """A DEP export or crypto container that does not have the required structure."""


@dataclass(frozen=True, slots=True)
class DepGroup:
    """One ``Belege-Gruppe`` entry.

    Attributes:
        certificate_der: the signing certificate (DER), or ``None`` for ``""``.
        ca_certificates: the ``Zertifizierungsstellen`` (DER), possibly empty.
        receipts: the compact JWS of the group in DEP order; may be a one-shot iterator.
    """

    certificate_der: bytes | None
    ca_certificates: tuple[bytes, ...]
    receipts: Iterable[str]


@dataclass(frozen=True, slots=True)
class ContainerEntry:
    """One ``certificateOrPublicKeyMap`` value: a DER certificate or public key."""

    id: str
    device_type: str  # CERTIFICATE or PUBLIC_KEY
    der: bytes


@dataclass(frozen=True, slots=True)
class CryptoContainer:
    """The crypto material container: AES key (may be absent) and signing keys by id."""

    aes_key: bytes | None
    entries: Mapping[str, ContainerEntry]


# --- writing -----------------------------------------------------------------------


def write_dep(out: IO[str] | IO[bytes], groups: Iterable[DepGroup]) -> None:
    """Stream the DEP export of ``groups`` to ``out`` (a text or binary file handle).

    The bytes equal ``json.dumps({"Belege-Gruppe": [...]}, indent=2, ensure_ascii=False)``;
    binary handles receive UTF-8.
    """
    write = _sink(out)
    write('{\n  "Belege-Gruppe": ')
    _write_list(write, groups, "  ", _group_writer(write))
    write("\n}")


def _sink(out: IO[str] | IO[bytes]) -> Callable[[str], object]:
    if isinstance(out, io.RawIOBase | io.BufferedIOBase) or "b" in getattr(out, "mode", ""):
        binary = cast("IO[bytes]", out)
        return lambda text: binary.write(text.encode("utf-8"))
    return cast("IO[str]", out).write


def _write_list(
    write: Callable[[str], object],
    items: Iterable[Any],
    indent: str,
    write_item: Callable[[Any], None],
) -> None:
    """Write a JSON array the way ``json.dumps(indent=2)`` does; ``[]`` when empty."""
    empty = True
    for item in items:
        write(f"[\n{indent}  " if empty else f",\n{indent}  ")
        write_item(item)
        empty = False
    write("[]" if empty else f"\n{indent}]")


def _group_writer(write: Callable[[str], object]) -> Callable[[DepGroup], None]:
    def write_string(value: str) -> None:
        write(json.dumps(value, ensure_ascii=False))

    def write_group(group: DepGroup) -> None:
        cert = "" if group.certificate_der is None else b64(group.certificate_der)
        write(f'{{\n{_KEY_INDENT}"{CERT}": {json.dumps(cert)},\n{_KEY_INDENT}"{CHAIN}": ')
        _write_list(write, (b64(der) for der in group.ca_certificates), _KEY_INDENT, write_string)
        write(f',\n{_KEY_INDENT}"{RECEIPTS}": ')
        _write_list(write, group.receipts, _KEY_INDENT, write_string)
        write(f"\n{_GROUP_INDENT}}}")

    return write_group


def container_json(aes_key: bytes, units: Iterable[Identity]) -> str:
    """The ``cryptographicMaterialContainer.json`` text for ``aes_key`` and ``units``.

    Open-system units are listed as ``CERTIFICATE`` (DER certificate), closed-system
    units (``AT0``) as ``PUBLIC_KEY`` (DER SubjectPublicKeyInfo), keyed by field 11.

    Raises:
        ValueError: an open-system unit has no certificate.
    """
    entries = {unit.serial: _container_entry(unit) for unit in units}
    document = {"base64AESKey": b64(aes_key), "certificateOrPublicKeyMap": entries}
    return json.dumps(document, indent=2, ensure_ascii=False)


def _container_entry(unit: Identity) -> dict[str, str]:
    if unit.closed:
        kind, der = PUBLIC_KEY, unit.public_key_der
    elif unit.certificate_der is None:
        raise ValueError(f"open-system unit {unit.unit_id} has no certificate")
    else:
        kind, der = CERTIFICATE, unit.certificate_der
    return {
        "id": unit.serial,
        "signatureDeviceType": kind,
        "signatureCertificateOrPublicKey": b64(der),
    }


# --- reading -----------------------------------------------------------------------


def load_dep(fp: IO[str] | IO[bytes]) -> Iterator[tuple[DepGroup, str]]:
    """Parse a DEP export from ``fp`` and iterate over it; see :func:`iter_dep`."""
    try:
        # whole, as it may exceed jsonstream.MAX_VALUE; a key named twice hides a value
        document = json.load(
            fp, object_pairs_hook=unique_keys, parse_constant=jsonstream.refuse_constant
        )
    except DuplicateKey as exc:
        raise DepFormatError(f"DEP export: {exc.args[0]!r} appears twice in one object") from exc
    except (ValueError, RecursionError) as exc:
        raise DepFormatError(f"DEP export is {json_error(exc)}") from exc
    return iter_dep(document)


def stream_dep(
    fp: IO[str] | IO[bytes],
    *,
    chunk: int = 1 << 18,
    on_read: Callable[[int], None] | None = None,
) -> Iterator[tuple[DepGroup, str]]:
    """:func:`load_dep` without holding the document: one chunk and one receipt at a time.

    A group's receipts are streamed when its certificate and certification authorities
    come before them (as in every export we and the BMF tools write); otherwise that one
    group's receipts are held until its end. Receipts of a streamed group come before a
    structural error later in the group is found, and its :class:`DepGroup` has no
    ``receipts``.

    Args:
        chunk: how much of ``fp`` to read at a time.
        on_read: called with the size of every chunk read from ``fp`` (progress).

    Raises:
        DepFormatError: as :func:`iter_dep`, or the file is not valid JSON (lazily).
    """
    reader = JsonReader(fp, chunk=chunk, on_read=on_read)
    try:
        if not reader.start_object():
            raise DepFormatError("DEP export: expected a JSON object")
        found = False
        for key in reader.members():
            if key != GROUPS:
                reader.value()
                continue
            if found:
                raise DepFormatError(f"DEP export: {GROUPS!r} appears twice")
            found = True
            if not reader.start_array():
                raise DepFormatError(f"DEP export.{GROUPS}: expected list")
            for index in reader.elements():
                yield from _stream_group(reader, f"{GROUPS}[{index}]")
        if not found:
            raise DepFormatError(f"DEP export: missing key {GROUPS!r}")
        reader.end()
    except JsonStreamError as exc:
        raise DepFormatError(f"DEP export is {exc}") from exc


def _stream_group(reader: JsonReader, where: str) -> Iterator[tuple[DepGroup, str]]:
    if not reader.start_object():
        raise DepFormatError(f"{where}: expected a JSON object")
    fields: dict[str, object] = {}
    streamed = False
    for key in reader.members():
        if streamed and key in (RECEIPTS, CERT, CERT_LEGACY, CHAIN):
            raise DepFormatError(f"{where}: {key!r} after {RECEIPTS!r}")
        if key in fields:  # a second list of receipts must not hide the first (or be hidden)
            raise DepFormatError(f"{where}: {key!r} appears twice")
        if key != RECEIPTS:
            fields[key] = reader.value()
            continue
        if not reader.start_array():
            raise DepFormatError(f"{where}.{RECEIPTS}: expected list")
        receipts = (
            _string(reader.value(), f"{where}.{RECEIPTS}[{index}]") for index in reader.elements()
        )
        if CHAIN in fields and (CERT in fields or CERT_LEGACY in fields):
            group = _read_group(fields | {RECEIPTS: []}, where)
            for receipt in receipts:
                yield group, receipt
            streamed = True
        else:  # the group's certificate comes later: hold its receipts, one by one
            fields[RECEIPTS] = list(receipts)
    if not streamed:
        group = _read_group(fields, where)
        for receipt in group.receipts:
            yield group, receipt


def iter_dep(document: object) -> Iterator[tuple[DepGroup, str]]:
    """Yield ``(group, jws)`` for every receipt of a parsed DEP export, in DEP order.

    Every receipt of one group is paired with the same :class:`DepGroup` object.

    Raises:
        DepFormatError: a required key is missing or has the wrong type (raised lazily,
            when the iteration reaches the broken element).
    """
    groups = _require(_mapping(document, "DEP export"), GROUPS, list, "DEP export")
    for index, raw in enumerate(groups):
        group = _read_group(raw, f"{GROUPS}[{index}]")
        for receipt in group.receipts:
            yield group, receipt


def _read_group(raw: object, where: str) -> DepGroup:
    group = _mapping(raw, where)
    key = CERT_LEGACY if CERT not in group and CERT_LEGACY in group else CERT
    cert = _require(group, key, str, where)
    chain = _require(group, CHAIN, list, where)
    receipts = _require(group, RECEIPTS, list, where)
    return DepGroup(
        certificate_der=_der(cert, f"{where}.{CERT}") if cert else None,
        ca_certificates=tuple(_der(c, f"{where}.{CHAIN}[{i}]") for i, c in enumerate(chain)),
        receipts=tuple(_string(r, f"{where}.{RECEIPTS}[{i}]") for i, r in enumerate(receipts)),
    )


def load_container(fp: IO[str] | IO[bytes]) -> CryptoContainer:
    """Parse a crypto material container from ``fp``; see :func:`read_container`.

    At most :data:`~agent.at_rksv.jsonstream.MAX_VALUE` characters are read, so that a
    wrong file (a DEP, ``/dev/zero``) cannot take all memory.
    """
    try:
        document = jsonstream.load(fp)
    except JsonStreamError as exc:
        raise DepFormatError(f"crypto container is {exc}") from exc
    return read_container(document)


def read_container(document: object) -> CryptoContainer:
    """Read a parsed crypto material container.

    Raises:
        DepFormatError: a key is missing, a value is not base64, the AES key is not 32
            bytes, or an entry's ``id`` differs from its map key.
    """
    root = _mapping(document, "crypto container")
    raw_key = root.get("base64AESKey")
    aes_key = None if raw_key is None else _der(raw_key, "base64AESKey")
    if aes_key is not None and len(aes_key) != 32:
        raise DepFormatError(f"base64AESKey: expected 32 bytes, got {len(aes_key)}")
    raw_map = _require(root, "certificateOrPublicKeyMap", dict, "crypto container")
    entries = {key: _read_entry(key, value) for key, value in raw_map.items()}
    return CryptoContainer(aes_key=aes_key, entries=entries)


def _read_entry(key: str, raw: object) -> ContainerEntry:
    where = f"certificateOrPublicKeyMap[{key!r}]"
    entry = _mapping(raw, where)
    entry_id = _require(entry, "id", str, where)
    kind = _require(entry, "signatureDeviceType", str, where)
    if entry_id != key:
        raise DepFormatError(f"{where}: id {entry_id!r} differs from its key")
    if kind not in (CERTIFICATE, PUBLIC_KEY):
        raise DepFormatError(f"{where}: unknown signatureDeviceType {kind!r}")
    der = _der(_require(entry, "signatureCertificateOrPublicKey", str, where), where)
    return ContainerEntry(id=entry_id, device_type=kind, der=der)


def _mapping(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DepFormatError(f"{where}: expected a JSON object")
    return value


def _require(container: Mapping[str, object], key: str, kind: type[Any], where: str) -> Any:
    if key not in container:
        raise DepFormatError(f"{where}: missing key {key!r}")
    value = container[key]
    if not isinstance(value, kind):
        raise DepFormatError(f"{where}.{key}: expected {kind.__name__}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DepFormatError(f"{where}: expected a string")
    return value


def _der(value: object, where: str) -> bytes:
    text = _string(value, where)
    try:
        return b64_decode(text)
    except ValueError as exc:
        raise DepFormatError(f"{where}: not valid base64") from exc

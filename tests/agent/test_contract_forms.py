"""The sale contract's fast forms give what the plain ones gave: the JSON reader (one
decoder for every call)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.contract import load_json
from agent.errors import InvalidSale
from storage.canonical import DuplicateKey, unique_keys


def _reference_load(raw: bytes | str) -> Any:
    """What load_json did with json.loads, a new decoder per call: the value, or the
    refusal's words."""
    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        return f"(document): the key {exc.args[0]!r} appears twice in one object [duplicate-key]"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"(document): not valid JSON: {exc} [json]"


def _outcome(raw: bytes | str) -> Any:
    try:
        return load_json(raw)
    except InvalidSale as exc:
        return str(exc)


DOCUMENTS: list[bytes | str] = [
    '{"a": [1, {"b": "\\u00fc"}], "c": null}',
    '  {"a": 1}  \n',
    '{"a": 1, "a": 2}',
    '{"a": {"b": 1, "b": 1}}',
    "[1, 2]",
    '"text"',
    '{"a": 1} x',
    "",
    "not json",
    '{"a": NaN}',
    "\ufeff{}",
    b'{"a": "\xc3\xbc"}',
    b"\xef\xbb\xbf{}",
    b"\xef\xbb\xbf\xef\xbb\xbf{}",
    '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-32-le"),
    b'{"a": "\xff"}',
    b"",
    bytearray(b'{"a": 1}'),
]


@pytest.mark.parametrize("raw", DOCUMENTS)
def test_load_json_reads_as_json_loads_did(raw: bytes | str) -> None:
    assert _outcome(raw) == _reference_load(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("\ufeff{}", "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
        (b"\xef\xbb\xbf\xef\xbb\xbf{}", "Expecting value: line 1 column 1 (char 0)"),
        ('{"a": 1} x', "Extra data: line 1 column 10 (char 9)"),
    ],
)
def test_load_json_refuses_in_json_loads_words(raw: bytes | str, message: str) -> None:
    with pytest.raises(InvalidSale) as refused:
        load_json(raw)
    assert refused.value.message == f"not valid JSON: {message}"

"""A DEP with nothing to verify, and JSON that is not JSON (NaN, Infinity).

An empty DEP (no group, or groups without receipts) is a finding, ``dep-empty``: a
verdict "valid" over zero receipts would pass a wrong file or an export that missed. The
``json`` module reads ``NaN``, ``Infinity`` and ``-Infinity``, which JSON does not have:
the reader refuses them, naming the line and column.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rksv_craft import CONTAINER_FILE, Spec, build, container

from agent.at_rksv.dep import DepFormatError, load_container, stream_dep
from agent.at_rksv.jsonstream import JsonReader, JsonStreamError
from agent.at_rksv.verify import verify_dep, verify_files
from factories import cli_run, expect, flat

EMPTY = {
    "no-group": {"Belege-Gruppe": []},
    "empty-group": build([]),
    "two-empty-groups": {"Belege-Gruppe": build([])["Belege-Gruppe"] * 2},
}


@pytest.mark.parametrize("document", EMPTY.values(), ids=EMPTY.keys())
def test_an_empty_dep_is_a_finding(document: dict[str, object]) -> None:
    report = verify_dep(document, container())
    assert not report.ok
    assert [(f.receipt, f.rule) for f in report.findings] == [(None, "dep-empty")]
    assert "no receipt" in report.findings[0].message


@pytest.mark.usefixtures("vectors")  # CONTAINER_FILE
def test_an_empty_dep_is_invalid_on_the_command_line(tmp_path: Path) -> None:
    dep = tmp_path / "dep.json"
    dep.write_text(json.dumps(EMPTY["empty-group"]), encoding="utf-8")
    text = flat(expect(cli_run()("verify", dep, CONTAINER_FILE), 1).stdout)
    assert "dep-empty at (DEP)" in text
    assert "INVALID: 0 receipts checked" in text


@pytest.mark.usefixtures("vectors")  # CONTAINER_FILE
def test_an_unreadable_dep_is_not_also_empty(tmp_path: Path) -> None:
    """The one finding is that it cannot be read."""
    (tmp_path / "dep.json").write_text("{", encoding="utf-8")
    report = verify_files(tmp_path / "dep.json", CONTAINER_FILE)
    assert [f.rule for f in report.findings] == ["malformed-dep"]


CONSTANTS = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_constant_that_is_not_json_is_refused_in_the_dep(constant: str) -> None:
    text = json.dumps(build([Spec(), Spec(100)]))[:-1] + f',\n "y": {constant}}}'
    report = verify_dep(stream_dep(io.StringIO(text)), container())
    assert [(f.receipt, f.rule) for f in report.findings] == [(None, "malformed-dep")]
    message = report.findings[0].message
    assert f"{constant} is not a JSON value" in message
    assert "line 2 column 7" in message


@pytest.mark.parametrize("constant", CONSTANTS)
def test_a_constant_that_is_not_json_is_refused_in_the_container(constant: str) -> None:
    text = json.dumps(container())[:-1] + f', "y": [1, {constant}]}}'
    with pytest.raises(DepFormatError, match=f"{constant} is not a JSON value: line 1"):
        load_container(io.StringIO(text))


def _place(text: str, what: str) -> str:
    """Where ``what`` last occurs in ``text``, as the reader names it."""
    pos = text.rindex(what)
    line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
    return rf"line {line} column {column} \(char {pos}\)"


def _read_all(reader: JsonReader) -> None:
    assert reader.start_array()
    for _ in reader.elements():
        reader.value()


def test_the_place_counts_from_the_start_of_the_file() -> None:
    """Read in chunks of 7 characters: line and column are those of the file, not of
    the chunk in hand."""
    text = '[\n"NaN", "a\\nb",\n  "x" , NaN]'
    reader = JsonReader(io.StringIO(text), chunk=7)
    with pytest.raises(JsonStreamError, match=f"NaN is not a JSON value: {_place(text, 'NaN')}"):
        _read_all(reader)


def test_a_decoding_error_names_the_place_in_the_file() -> None:
    text = '[\n"a", "b",\n  "c" , tru]'
    reader = JsonReader(io.StringIO(text), chunk=5)
    with pytest.raises(JsonStreamError, match=_place(text, "tru")):
        _read_all(reader)


@pytest.mark.usefixtures("vectors")  # CONTAINER_FILE
def test_nan_on_the_command_line_is_invalid(tmp_path: Path) -> None:
    dep = tmp_path / "dep.json"
    dep.write_text(json.dumps(build([Spec(), Spec(100)]))[:-1] + ', "y": NaN}', encoding="utf-8")
    text = flat(expect(cli_run()("verify", dep, CONTAINER_FILE), 1).stdout)
    assert "malformed-dep at (DEP)" in text
    assert "NaN is not a JSON value" in text

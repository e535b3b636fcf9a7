"""A crypto container without an AES key: the turnover counter cannot be checked.

Like ztp, the verifier then skips the counter (the corpus classification depends on it,
exit 0 stays), but the report says so: ``counter_checked`` is false and a note tells why,
in the human output and in ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rksv_craft import Spec, build, container

from agent.at_rksv.verify import verify_dep
from factories import cli_run, expect, flat

NOTE = "turnover counter not checked: the crypto container holds no AES key"
# a Training receipt that adds to the counter: only the counter check finds it
WRONG_COUNTER = [Spec(), Spec(500), Spec(700, "tra"), Spec(100, counter=1300)]


def test_a_wrong_counter_is_found_with_the_key() -> None:
    report = verify_dep(build(WRONG_COUNTER), container())
    assert [(f.receipt, f.rule) for f in report.findings] == [("B0004", "turnover-counter-invalid")]
    assert report.counter_checked
    assert report.notes == []


def test_without_the_key_the_report_says_the_counter_was_not_checked() -> None:
    report = verify_dep(build(WRONG_COUNTER), container(aes_key=False))
    assert report.ok, report.findings
    assert not report.counter_checked
    assert report.notes == [NOTE]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    dep, key_less = tmp_path / "dep.json", tmp_path / "container.json"
    dep.write_text(json.dumps(build(WRONG_COUNTER)), encoding="utf-8")
    key_less.write_text(json.dumps(container(aes_key=False)), encoding="utf-8")
    return dep, key_less


def test_the_command_says_it_and_exits_0(tmp_path: Path) -> None:
    run = cli_run()
    text = flat(expect(run("verify", *_files(tmp_path)), 0).stdout)
    assert f"note: {NOTE}" in text
    assert "valid: 4 receipts checked (turnover counter not checked)" in text


def test_json_carries_counter_checked(tmp_path: Path) -> None:
    run = cli_run()
    body = json.loads(expect(run("verify", *_files(tmp_path), "--json"), 0).stdout)
    assert body["ok"] is True
    assert body["counter_checked"] is False
    assert body["notes"] == [NOTE]

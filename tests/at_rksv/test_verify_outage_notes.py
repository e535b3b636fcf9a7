"""Receipts with the failure marker, and a DEP that ends inside an outage: notes, not findings.

rksv.md 5: a receipt with "Sicherheitseinrichtung ausgefallen" is valid in the DEP, and the
BMF Prüftool reports an unsigned zero receipt as negative "with a hint". The verdict stays
valid (the ztp corpus is classified as before), but the report counts them, and says when
the DEP ends before the Sammelbeleg of its last outage.
"""

from __future__ import annotations

import json
from pathlib import Path

from rksv_craft import Spec, build, container

from agent.at_rksv.verify import verify_dep
from factories import cli_run, expect, flat

# the reviewer's DEP: 5 of 6 receipts with the marker (2 of them zero), the outage open
OPEN_AT_END = [
    Spec(),
    Spec(100, signed=False),
    Spec(0, signed=False),
    Spec(200, signed=False),
    Spec(0, signed=False),
    Spec(300, signed=False),
]
# two outages, each ended by its Sammelbeleg: the second right after the first receipt
# signed again (rksv.md 5 allows both positions)
TWO_CLOSED = [
    Spec(),
    Spec(100, signed=False),
    Spec(0),  # Sammelbeleg
    Spec(200),
    Spec(300, signed=False),
    Spec(0, signed=False),
    Spec(400),
    Spec(0),  # Sammelbeleg
]


def test_the_marker_and_an_open_outage_at_the_end_are_noted() -> None:
    """Before: ``notes == []`` and nothing counted."""
    report = verify_dep(build(OPEN_AT_END), container())
    assert report.ok, report.findings
    assert report.receipts == 6
    counts = (report.fallback_receipts, report.fallback_zero_receipts, report.outages)
    assert counts == (5, 2, 1)
    assert report.open_outage_from == "B0002"
    assert report.notes == [
        "5 receipts carry the failure marker 'Sicherheitseinrichtung ausgefallen' (2 of"
        " them zero receipts), in 1 outage; the BMF Prüftool reports an unsigned zero"
        " receipt as negative, with a hint",
        "the DEP ends inside an outage (the failure marker from receipt B0002 on): its"
        " Sammelbeleg, the signed zero receipt that ends it, is not in it yet",
    ]


def test_outages_ended_by_their_sammelbeleg_are_counted_not_open() -> None:
    report = verify_dep(build(TWO_CLOSED), container())
    assert report.ok, report.findings
    counts = (report.fallback_receipts, report.fallback_zero_receipts, report.outages)
    assert counts == (3, 1, 2)
    assert report.open_outage_from is None
    assert len(report.notes) == 1
    assert report.notes[0].startswith("3 receipts carry the failure marker")
    assert "in 2 outages" in report.notes[0]


def test_a_dep_cut_after_the_first_receipt_signed_again_ends_inside_the_outage() -> None:
    """Its Sammelbeleg may still come right after that receipt: not in this DEP."""
    report = verify_dep(build([Spec(), Spec(100, signed=False), Spec(200)]), container())
    assert report.ok, report.findings
    assert report.open_outage_from == "B0002"
    assert report.notes[0] == (
        "1 receipt carries the failure marker 'Sicherheitseinrichtung ausgefallen' (0 of them"
        " zero receipts), in 1 outage"
    )


def test_a_last_zero_receipt_with_the_marker_may_be_a_schlussbeleg() -> None:
    """A register decommissioned inside its outage (``special closing --failed-ok``) ends
    its DEP with a zero receipt with the marker, rksv.md 5: valid, and the note says that
    no Sammelbeleg may follow (before: only that it was not in the DEP yet)."""
    report = verify_dep(
        build([Spec(), Spec(100, signed=False), Spec(0, signed=False)]), container()
    )
    assert report.ok, report.findings
    assert report.open_outage_from == "B0002"
    assert report.notes[-1] == (
        "the DEP ends inside an outage (the failure marker from receipt B0002 on): its"
        " Sammelbeleg, the signed zero receipt that ends it, is not in it yet, unless its"
        " last receipt, a zero receipt with the marker, is the Schlussbeleg of a register"
        " decommissioned inside the outage (rksv.md 5: a Schlussbeleg may carry the marker,"
        " and no receipt follows it)"
    )


def test_a_training_receipt_of_zero_is_no_zero_receipt() -> None:
    """As for the Sammelbeleg rule: a zero receipt is no Storno or Training receipt."""
    report = verify_dep(build([Spec(), Spec(0, "tra", signed=False), Spec(0)]), container())
    assert report.ok, report.findings
    assert (report.fallback_receipts, report.fallback_zero_receipts) == (1, 0)
    assert report.open_outage_from is None


def test_a_dep_without_the_marker_has_no_note() -> None:
    report = verify_dep(build([Spec(), Spec(100), Spec(0)]), container())
    assert report.notes == []
    assert (report.fallback_receipts, report.outages, report.open_outage_from) == (0, 0, None)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    dep, crypto = tmp_path / "dep.json", tmp_path / "container.json"
    dep.write_text(json.dumps(build(OPEN_AT_END)), encoding="utf-8")
    crypto.write_text(json.dumps(container()), encoding="utf-8")
    return dep, crypto


def test_the_command_prints_the_notes_and_exits_0(tmp_path: Path) -> None:
    text = flat(expect(cli_run()("verify", *_files(tmp_path)), 0).stdout)
    assert "note: 5 receipts carry the failure marker" in text
    assert "note: the DEP ends inside an outage (the failure marker from receipt B0002" in text
    assert text.endswith("valid: 6 receipts checked")


def test_json_counts_them(tmp_path: Path) -> None:
    """The existing fields stay; the counts are added (before: ``"notes": []`` only)."""
    body = json.loads(expect(cli_run()("verify", *_files(tmp_path), "--json"), 0).stdout)
    assert (body["ok"], body["receipts"], body["findings"]) == (True, 6, [])
    assert (body["counter_checked"], body["partial"]) == (True, False)
    assert len(body["notes"]) == 2
    assert body["fallback_receipts"] == 5
    assert body["fallback_zero_receipts"] == 2
    assert body["outages"] == 1
    assert body["ends_in_outage"] is True
    assert body["open_outage_from"] == "B0002"

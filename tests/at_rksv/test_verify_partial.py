"""A part of a DEP (``export dep --from``): verified with ``partial=True`` / ``--partial``.

The first receipt of a part is not the Startbeleg: its chaining value and turnover
counter come from receipts the file does not hold, so they are taken as given (as ztp
does for the second of a split DEP); everything inside the file is still checked. Plain
``verify`` of such a file says once that it does not start with the Startbeleg and names
the option, instead of a finding for every Startbeleg rule.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from rksv_craft import Spec, build, container, dep, receipts

from agent.at_rksv.encoding import b64url, b64url_decode
from agent.at_rksv.verify import verify_dep
from agent.clock import FrozenClock
from agent.receipts import ReceiptService
from factories import VECTORS, cli_run, expect, flat, sale

SALES = [Spec(), Spec(500), Spec(-200, "sto"), Spec(700, "tra"), Spec(100, signed=False)]
SALES += [Spec(), Spec(300), Spec(250)]  # the Sammelbeleg, then two sales


def _e2e(mode: str) -> tuple[list[str], dict[str, Any]]:
    directory = VECTORS / mode
    document = json.loads((directory / "dep-export.json").read_text(encoding="utf-8"))
    items = [jws for group in document["Belege-Gruppe"] for jws in group["Belege-kompakt"]]
    box = json.loads((directory / "cryptographicMaterialContainer.json").read_text("utf-8"))
    return items, box


@pytest.mark.usefixtures("vectors")
@pytest.mark.parametrize("mode", ["e2e_open", "e2e_closed"])
def test_every_tail_of_the_e2e_deps_verifies_as_a_part(mode: str) -> None:
    """Starting at a Storno, a Training receipt, inside the outage run, at the Sammelbeleg."""
    items, box = _e2e(mode)
    for first in range(1, len(items)):
        report = verify_dep(dep(items[first:]), box, partial=True)
        assert report.ok, (first, report.findings)
        assert report.partial
        assert report.receipts == len(items) - first


def test_a_part_of_crafted_receipts_verifies() -> None:
    items = receipts(SALES)
    for first in range(1, len(items)):
        report = verify_dep(dep(items[first:]), container(), partial=True)
        assert report.ok, (first, report.findings)
        assert any("taken as given" in note for note in report.notes), report.notes


def test_plain_verify_says_once_that_the_part_does_not_start_with_the_startbeleg() -> None:
    items = receipts([Spec(), Spec(500), Spec(300), Spec(200)])
    report = verify_dep(dep(items[2:]), container())
    assert [(f.receipt, f.rule) for f in report.findings] == [("B0003", "start-receipt-chaining")]
    message = report.findings[0].message
    assert "does not start with the Startbeleg" in message
    assert "--partial" in message
    assert not report.partial


def test_inside_a_part_everything_is_checked() -> None:
    """A wrong counter, a broken chain and a bad signature after the first receipt."""
    items = receipts([Spec(), Spec(500), Spec(300), Spec(200, counter=9), Spec(100)])
    head, signature = items[4].rsplit(".", 1)
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 1
    items[4] = f"{head}.{b64url(bytes(raw))}"
    report = verify_dep(dep(items[2:]), container(), partial=True)
    assert [(f.receipt, f.rule) for f in report.findings] == [
        ("B0004", "turnover-counter-invalid"),
        ("B0005", "signature-invalid"),
        ("B0005", "turnover-counter-invalid"),  # the running total goes on from B0004's
    ]
    broken = verify_dep(dep(items[2:3] + items[4:]), container(), partial=True)
    assert ("B0005", "chaining-invalid") in [(f.receipt, f.rule) for f in broken.findings]


def test_a_part_that_starts_with_the_startbeleg_is_checked_in_full() -> None:
    """A receipt chained over the Kassen-ID is a Startbeleg: its rules apply."""
    report = verify_dep(build([Spec(100), Spec(500)]), container(), partial=True)
    assert [(f.receipt, f.rule) for f in report.findings] == [("B0001", "start-receipt-turnover")]
    assert not report.partial
    assert verify_dep(build(SALES), container(), partial=True).ok


def test_without_the_option_a_whole_dep_is_not_partial() -> None:
    report = verify_dep(build(SALES), container())
    assert report.ok, report.findings
    assert not report.partial
    assert not any("taken as given" in note for note in report.notes), report.notes


# -- the command line: export dep --from/--to and verify --partial ---------------------------


@pytest.fixture(name="two_days")
def _two_days(service: ReceiptService, clock: FrozenClock) -> ReceiptService:
    """KASSE-1: the Startbeleg and a sale on 2 March 2026, two sales on 3 March."""
    service.issue(sale(request_id="d1"))
    for n in (1, 2):
        clock.set(dt.datetime(2026, 3, 3, 10, n, tzinfo=dt.UTC))
        service.issue(sale(request_id=f"d2-{n}"))
    return service


def test_export_of_a_later_period_says_it_is_a_part(
    two_days: ReceiptService, data_dir: Path, tmp_path: Path
) -> None:
    run = cli_run()
    part, box = tmp_path / "part.json", tmp_path / "c.json"
    days = ("--from", "2026-03-03", "--to", "2026-03-03")
    export = ("export", "dep", "--register", "KASSE-1", "--data-dir", data_dir)
    result = expect(run(*export, *days, "-o", part), 0)
    stderr = flat(result.stderr)
    assert "a part of the DEP" in stderr
    assert "verify --partial" in stderr
    expect(run("export", "crypto-container", "--register", "KASSE-1", "-o", box,
               "--data-dir", data_dir), 0)  # fmt: skip

    text = flat(expect(run("verify", part, box), 1).stdout)
    assert "does not start with the Startbeleg" in text
    assert "--partial" in text
    assert text.count("start-receipt") == 1

    text = flat(expect(run("verify", "--partial", part, box), 0).stdout)
    assert "valid: 2 receipts checked" in text
    body = json.loads(expect(run("verify", "--partial", part, box, "--json"), 0).stdout)
    assert body["ok"] is True
    assert body["partial"] is True


def test_export_from_the_first_day_says_it_starts_with_the_startbeleg(
    two_days: ReceiptService, data_dir: Path, tmp_path: Path
) -> None:
    run = cli_run()
    part = tmp_path / "part.json"
    export = ("export", "dep", "--register", "KASSE-1", "--data-dir", data_dir, "-o", part)
    result = expect(run(*export, "--to", "2026-03-02"), 0)
    stderr = flat(result.stderr)
    assert "a part of the DEP" in stderr
    assert "--partial" not in stderr
    assert "starts with the Startbeleg" in stderr
    whole = expect(run(*export), 0)
    assert whole.stderr == ""


def test_a_range_to_the_last_date_there_is_exports_everything(
    two_days: ReceiptService, data_dir: Path, tmp_path: Path
) -> None:
    """--to 9999-12-31 (and --from 0001-01-01): no day after or before it to count from."""
    run = cli_run()
    out = tmp_path / "all.json"
    export = ("export", "dep", "--register", "KASSE-1", "--data-dir", data_dir, "-o", out)
    result = expect(run(*export, "--from", "0001-01-01", "--to", "9999-12-31", "--json"), 0)
    assert json.loads(result.stdout)["receipts"] == 4
    assert result.stderr == ""

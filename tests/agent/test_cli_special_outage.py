"""``till-agent special`` while the register's outage is open.

A command runs in a process of its own: no probe tells it that the unit is back, and the
breaker would stamp the failure marker on every receipt without asking the unit. So
``special`` asks the unit through the signed Sammelbeleg the outage owes, as the local
API's zero receipt does (rksv.md 5: after the unit works again a signed Nullbeleg ends
the outage; an unsigned one is reported negative by the BMF Prüftool). A Nullbeleg is
that Sammelbeleg; a Monatsbeleg carries the marker only when the unit really still fails;
a Jahres- or Schlussbeleg is issued only signed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from factories import cli_run, expect, sale

REGISTER = "KASSE-1"
NOV_30 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)  # 10:00 in Vienna, the last day
DEC_31 = dt.datetime(2026, 12, 31, 9, 0, tzinfo=dt.UTC)


class _Till:
    """KASSE-1 on a simulated unit, on the command line, with the clock at ``now``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.run = cli_run()

    def __call__(self, *args: str, code: int = 0, input: str | None = None) -> Any:
        return expect(self.run(*args, "--data-dir", self.data_dir, input=input), code)

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)

    def sell(self, request_id: str) -> str:
        raw = json.dumps(sale(request_id=request_id))
        return str(json.loads(self("issue", "-", "--json", input=raw).stdout)["signature_state"])

    def outage(self) -> dict[str, Any]:
        [outage] = self.json("outage", "list")
        return dict(outage)

    def probes(self) -> int:
        return int(self.outage()["probe_attempts"])

    def receipts(self) -> list[tuple[int, str, str]]:
        rows = self.json("receipts", "list", "--register", REGISTER)
        return sorted((r["number"], r["kind"], r["signature_state"]) for r in rows)


@pytest.fixture(name="till")
def _till(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> _Till:
    """KASSE-1 created on 30 November 2026 with its Startbeleg (1)."""
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(SystemClock, "now", lambda _self: NOV_30)
    till = _Till(data_dir)
    till("unit", "create-software", "--id", "dev", "--simulate")
    till("init", REGISTER, "--unit", "dev")
    return till


@pytest.fixture(name="in_outage")
def _in_outage(till: _Till) -> _Till:
    """KASSE-1 with outage 1 open: its unit down, sale 2 with the failure marker."""
    till("simulate", "unit", "down")
    assert till.sell("a") == "fallback"
    return till


@pytest.mark.usefixtures("no_system_config")
class TestNullbeleg:
    def test_after_the_unit_is_back_it_is_the_signed_sammelbeleg(self, in_outage: _Till) -> None:
        """Unit back up: ``special null`` issues the signed Sammelbeleg and the outage is
        closed by it (before: a Nullbeleg with the marker, the outage still open)."""
        in_outage("simulate", "unit", "up")
        issued = in_outage.json("special", REGISTER, "null")
        assert (issued["kind"], issued["signature_state"]) == ("sammelbeleg", "signed")
        assert "Sicherheitseinrichtung ausgefallen" not in issued["lines"]
        outage = in_outage.outage()
        assert outage["ended_at"] is not None
        assert outage["sammelbeleg_number"] == issued["number"] == 3
        # the next Nullbeleg is an ordinary one, signed
        assert in_outage.json("special", REGISTER, "null")["kind"] == "null"
        assert in_outage.receipts()[-2:] == [(3, "sammelbeleg", "signed"), (4, "null", "signed")]

    def test_a_unit_still_down_issues_nothing_and_exits_4(self, in_outage: _Till) -> None:
        """As ``outage recover`` with the unit down: exit 4, nothing issued, the attempt
        recorded as a probe of the open outage (before: a Nullbeleg with the marker, exit 0)."""
        probes = in_outage.probes()
        body = in_outage.json("special", REGISTER, "null", code=4)
        assert body["error"] == "WaitsForUnit"
        assert "Sammelbeleg" in body["message"]
        assert f"outage recover {REGISTER}" in body["message"]
        assert in_outage.receipts() == [(1, "start", "signed"), (2, "standard", "fallback")]
        assert in_outage.outage()["ended_at"] is None
        assert in_outage.probes() == probes + 1
        in_outage("outage", "recover", REGISTER, code=4)  # the same answer

    def test_without_an_outage_a_failing_unit_gives_a_marked_nullbeleg(self, till: _Till) -> None:
        """No outage open: a voluntary Nullbeleg may carry the marker (rksv.md 5), as the
        API's zero receipt would; the outage opens with it."""
        till("simulate", "unit", "down")
        issued = till.json("special", REGISTER, "null")
        assert (issued["kind"], issued["signature_state"]) == ("null", "fallback")
        assert till.outage()["first_number"] == issued["number"]


@pytest.mark.usefixtures("no_system_config")
class TestClosings:
    def test_a_monatsbeleg_after_the_unit_is_back_is_signed(self, in_outage: _Till) -> None:
        """The Sammelbeleg comes first, then the Monatsbeleg, signed (before: the marker
        without asking the unit)."""
        in_outage("simulate", "unit", "up")
        text = in_outage("special", REGISTER, "monthly").stdout
        assert "Sammelbeleg #3" in text
        assert in_outage.receipts()[-2:] == [(3, "sammelbeleg", "signed"), (4, "monthly", "signed")]
        assert in_outage.outage()["sammelbeleg_number"] == 3

    def test_json_names_the_sammelbeleg_issued_first(self, in_outage: _Till) -> None:
        in_outage("simulate", "unit", "up")
        body = in_outage.json("special", REGISTER, "monthly")
        assert (body["kind"], body["signature_state"]) == ("monthly", "signed")
        first = {"number": 3, "receipt_id": "3", "kind": "sammelbeleg", "state": "signed"}
        assert body["issued_first"] == [first]

    def test_a_monatsbeleg_with_the_unit_down_carries_the_marker(self, in_outage: _Till) -> None:
        """The unit was asked and still fails: the marker is allowed (rksv.md 5)."""
        probes = in_outage.probes()
        body = in_outage.json("special", REGISTER, "monthly")
        assert (body["kind"], body["signature_state"]) == ("monthly", "fallback")
        assert "issued_first" not in body
        assert in_outage.outage()["ended_at"] is None
        assert in_outage.probes() == probes + 1

    def test_a_refused_closing_issues_no_sammelbeleg(self, in_outage: _Till) -> None:
        """A Jahresbeleg on 30 November is refused before the unit is asked: nothing issued."""
        in_outage("simulate", "unit", "up")
        in_outage("special", REGISTER, "yearly", code=4)
        assert in_outage.receipts()[-1] == (2, "standard", "fallback")
        assert in_outage.outage()["ended_at"] is None

    def test_a_jahresbeleg_after_the_unit_is_back_is_signed(
        self, in_outage: _Till, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """31 December, the unit back: Sammelbeleg, then the Jahresbeleg, signed (before:
        refused, exit 4, the unit never asked)."""
        in_outage("special", REGISTER, "monthly")  # November, with the marker
        monkeypatch.setattr(SystemClock, "now", lambda _self: DEC_31)
        in_outage("simulate", "unit", "up")
        body = in_outage.json("special", REGISTER, "yearly")
        assert (body["kind"], body["signature_state"]) == ("yearly", "signed")
        assert body["issued_first"][0]["kind"] == "sammelbeleg"

    def test_a_jahresbeleg_with_the_unit_down_waits(
        self, in_outage: _Till, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        in_outage("special", REGISTER, "monthly")
        monkeypatch.setattr(SystemClock, "now", lambda _self: DEC_31)
        before = in_outage.receipts()
        assert in_outage.json("special", REGISTER, "yearly", code=4)["error"] == "WaitsForUnit"
        assert in_outage.receipts() == before

    def test_a_schlussbeleg_after_the_unit_is_back_is_signed(self, in_outage: _Till) -> None:
        """The Sammelbeleg closes the outage first, so the Schlussbeleg is issued, signed
        (before: refused for the open outage, the unit never asked)."""
        in_outage("simulate", "unit", "up")
        body = in_outage.json("special", REGISTER, "closing", "--yes")
        assert (body["kind"], body["signature_state"]) == ("closing", "signed")
        assert in_outage.receipts()[-2:] == [(3, "sammelbeleg", "signed"), (4, "closing", "signed")]

    def test_a_schlussbeleg_with_the_unit_down_waits(self, in_outage: _Till) -> None:
        body = in_outage.json("special", REGISTER, "closing", "--yes", code=4)
        assert "open outage" in body["message"]
        assert in_outage.receipts()[-1] == (2, "standard", "fallback")

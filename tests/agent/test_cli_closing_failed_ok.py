"""``till-agent special KASSE closing --failed-ok``: decommissioning a register whose unit is
down for good.

rksv.md 5 (BMF notice 18.11.2016) and 6: a Schlussbeleg may carry the failure marker. By
default a Schlussbeleg the unit does not sign still waits (exit 4), and the message says how
to decommission anyway; with ``--failed-ok`` it is issued with the marker (``fallback``), the
register is closed, and an open outage ends with it: its failure report is due in FinanzOnline
within a week, as the decommissioning report is. A waiting Jahresbeleg must be signed: it
still keeps the register open. The exported DEP verifies (open and closed systems).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from factories import box_words, cli_run, expect, flat, sale

REGISTER = "KASSE-1"
NOV_30 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)  # 10:00 in Vienna, the last day
DEC_1 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)  # November's Monatsbeleg is due
JAN_2 = dt.datetime(2027, 1, 2, 9, 0, tzinfo=dt.UTC)  # November's and the Jahresbeleg due
WEEK_LATER = "2026-12-07T09:00:00Z"  # NOV_30 + 7 days, as the API writes it
CLOSED_KEY_ID = "U:ATU12345678-K1"


class _Till:
    """KASSE-1 on a simulated (non-development) unit, on the command line."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.run = cli_run()

    def __call__(self, *args: str | Path, code: int = 0, input: str | None = None) -> Any:
        return expect(self.run(*args, "--data-dir", self.data_dir, input=input), code)

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)

    def sell(self, request_id: str, code: int = 0) -> Any:
        raw = json.dumps(sale(request_id=request_id))
        return json.loads(self("issue", "-", "--json", input=raw, code=code).stdout)

    def receipts(self) -> list[tuple[int, str, str]]:
        rows = self.json("receipts", "list", "--register", REGISTER)
        return sorted((r["number"], r["kind"], r["signature_state"]) for r in rows)

    def outages(self) -> list[dict[str, Any]]:
        return list(self.json("outage", "list"))

    def checks(self) -> list[tuple[str, int]]:
        return [(c["kind"], c["number"]) for c in self.json("checks", "list")]

    def waiting(self) -> list[str]:
        """The kinds of the special receipts waiting for the unit."""
        conn = sqlite3.connect(self.data_dir / "till.sqlite3")
        try:
            rows = conn.execute("SELECT kind FROM waiting_specials WHERE done_at IS NULL")
            return [str(r[0]) for r in rows]
        finally:
            conn.close()


def _till(data_dir: Path, monkeypatch: pytest.MonkeyPatch, *unit: str) -> _Till:
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(SystemClock, "now", lambda _self: NOV_30)
    till = _Till(data_dir)
    till("unit", "create-software", "--id", "u", "--simulate", *unit)
    till("init", REGISTER, "--unit", "u")
    return till


@pytest.fixture(name="till")
def _open_till(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> _Till:
    """KASSE-1 created on 30 November 2026 with its Startbeleg (1), on an open-system unit
    under a real provider's id (so it owes FinanzOnline reports), now down."""
    till = _till(data_dir, monkeypatch, "--zda", "AT1")
    till("simulate", "unit", "down")
    return till


def _set_now(monkeypatch: pytest.MonkeyPatch, now: dt.datetime) -> None:
    monkeypatch.setattr(SystemClock, "now", lambda _self: now)


@pytest.mark.usefixtures("no_system_config")
class TestByDefault:
    def test_a_schlussbeleg_the_unit_does_not_sign_waits_and_says_how_to_go_on(
        self, till: _Till
    ) -> None:
        """Exit 4 as before, nothing issued, no outage opened; the message names
        --failed-ok (before: it did not say how to decommission a dead unit's register)."""
        body = till.json("special", REGISTER, "closing", "--yes", code=4)
        assert body["error"] == "WaitsForUnit"
        assert "a Schlussbeleg is issued only when it signs" in body["message"]
        assert f"till-agent special {REGISTER} closing --yes --failed-ok" in body["message"]
        assert till.receipts() == [(1, "start", "signed")]
        assert till.outages() == []

    def test_with_an_outage_open_it_waits_and_says_how_to_go_on(self, till: _Till) -> None:
        assert till.sell("a")["signature_state"] == "fallback"
        text = flat(till("special", REGISTER, "closing", "--yes", code=4).stderr)
        assert "open outage" in text
        assert "--failed-ok" in text
        assert till.receipts()[-1] == (2, "standard", "fallback")
        assert till.outages()[0]["ended_at"] is None

    def test_failed_ok_is_for_a_schlussbeleg_only(self, till: _Till) -> None:
        """Another kind with --failed-ok is bad input (exit 3) naming the option."""
        body = till.json("special", REGISTER, "monthly", "--failed-ok", code=3)
        assert (body["field"], body["rule"]) == ("--failed-ok", "closing-only")
        assert till.receipts() == [(1, "start", "signed")]

    def test_help_documents_the_option(self, till: _Till) -> None:
        text = box_words(till.run("special", "--help").stdout)
        assert "--failed-ok" in text
        assert "failure marker" in text


@pytest.mark.usefixtures("no_system_config")
class TestFailedOk:
    def test_the_schlussbeleg_carries_the_marker_and_closes_the_register(self, till: _Till) -> None:
        """The unit fails on the Schlussbeleg itself: issued with the marker (before: exit
        4 whatever the operator said); its outage opens and ends with it, its report due
        within a week; the decommissioning report is owed too; sales are refused."""
        body = till.json("special", REGISTER, "closing", "--yes", "--failed-ok")
        assert (body["kind"], body["signature_state"], body["number"]) == ("closing", "fallback", 2)
        assert "Sicherheitseinrichtung ausgefallen" in body["lines"]
        ended = body["ended_outage"]
        assert (ended["first_number"], ended["last_number"], ended["affected"]) == (2, 2, 1)
        assert ended["sammelbeleg_number"] is None
        assert ended["ended_at"] is not None
        assert ended["report_due_at"] == WEEK_LATER
        assert ended["end_report_due_at"] is None  # the decommissioning report takes its place
        assert ended["escalations"] == ["opened", "decommissioned"]
        assert till.outages() == [ended]
        assert till.checks() == [("start", 1), ("closing", 2)]
        refused = till.sell("after", code=4)
        assert refused["rule"] == "register-closed"
        assert till.receipts() == [(1, "start", "signed"), (2, "closing", "fallback")]

    def test_an_open_outage_ends_with_it_after_the_unit_was_asked(self, till: _Till) -> None:
        """The unit is asked first through the Sammelbeleg (a failed probe), then the
        Schlussbeleg joins the outage with the marker and ends it; the text says what is
        owed: the decommissioning report and the failure report."""
        assert till.sell("a")["signature_state"] == "fallback"
        probes = till.outages()[0]["probe_attempts"]
        text = flat(till("special", REGISTER, "closing", "--yes", "--failed-ok").stdout)
        assert "Sicherheitseinrichtung ausgefallen" in text
        assert f"till-agent checks done {REGISTER} closing" in text
        assert "outage 1 ended with the register" in text
        assert "report the failure of unit u in FinanzOnline by 2026-12-07 10:00" in text
        assert "till-agent outage report 1 --reference" in text
        [outage] = till.outages()
        assert outage["probe_attempts"] == probes + 1
        assert (outage["first_number"], outage["last_number"], outage["affected"]) == (2, 3, 2)
        assert outage["ended_at"] is not None
        assert outage["sammelbeleg_number"] is None
        assert outage["report_due_at"] == WEEK_LATER
        assert till.receipts()[-1] == (3, "closing", "fallback")
        evidence = flat(till("outage", "show", "1").stdout)
        assert "Sammelbeleg: none, the register was decommissioned inside the outage" in evidence
        assert "Schlussbeleg, number 3" in evidence
        till("outage", "report", "1", "--reference", "FON-1")  # the failure report is owed
        till("checks", "done", REGISTER, "closing", "--reference", "FON-2")
        assert till.checks() == [("start", 1)]

    def test_no_end_report_is_taken_for_an_outage_a_schlussbeleg_ended(self, till: _Till) -> None:
        """The unit never came back: ``outage report --end`` is refused (exit 3) naming the
        decommissioning report instead (before: exit 0, and the evidence pack showed an
        end report of an outage that never ended in a Wiederinbetriebnahme)."""
        till.sell("a")
        till("special", REGISTER, "closing", "--yes", "--failed-ok")
        till("outage", "report", "1", "--reference", "FON-1")
        body = till.json("outage", "report", "1", "--end", "--reference", "FON-E", code=3)
        assert (body["field"], body["rule"]) == ("end", "decommissioned")
        assert f"till-agent checks done {REGISTER} closing" in body["message"]
        assert till.outages()[0]["end_report_reference"] is None
        evidence = till.json("outage", "show", "1")
        assert [r["end"] for r in evidence["reports"]] == [False]

    def test_a_report_recorded_already_is_not_asked_for_again(self, till: _Till) -> None:
        """The operator reported the outage before decommissioning: the text says the
        report is recorded and asks for nothing (before: report it by ..., then outage
        report), the decommissioning report is still owed."""
        till.sell("a")
        till("outage", "report", "1", "--reference", "FON-1")
        text = flat(till("special", REGISTER, "closing", "--yes", "--failed-ok").stdout)
        assert "its FinanzOnline report is recorded already (FON-1)" in text
        assert "report the failure" not in text
        assert "till-agent outage report" not in text
        assert f"till-agent checks done {REGISTER} closing" in text
        [outage] = till.outages()
        assert (outage["report_reference"], outage["ended_at"] is not None) == ("FON-1", True)

    def test_a_unit_back_gives_a_sammelbeleg_and_a_signed_schlussbeleg(self, till: _Till) -> None:
        """--failed-ok changes nothing while the unit signs."""
        till.sell("a")
        till("simulate", "unit", "up")
        body = till.json("special", REGISTER, "closing", "--yes", "--failed-ok")
        assert (body["kind"], body["signature_state"]) == ("closing", "signed")
        assert "ended_outage" not in body
        assert till.receipts()[-2:] == [(3, "sammelbeleg", "signed"), (4, "closing", "signed")]

    def test_the_due_monatsbeleg_comes_first_with_the_marker(
        self, till: _Till, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """1 December: November's Monatsbeleg first (it may carry the marker), then the
        Schlussbeleg; both in the one outage that ends with the register."""
        _set_now(monkeypatch, DEC_1)
        till("special", REGISTER, "closing", "--yes", "--failed-ok")
        assert till.receipts() == [
            (1, "start", "signed"),
            (2, "monthly", "fallback"),
            (3, "closing", "fallback"),
        ]
        [outage] = till.outages()
        assert (outage["first_number"], outage["last_number"]) == (2, 3)
        assert outage["ended_at"] is not None

    def test_a_waiting_jahresbeleg_keeps_the_register_open(
        self, till: _Till, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """2 January: November's Monatsbeleg carries the marker, December's Jahresbeleg
        must be signed and waits; the Schlussbeleg is refused (exit 4) naming that rule,
        the register still open and its outage too."""
        _set_now(monkeypatch, JAN_2)
        body = till.json("special", REGISTER, "closing", "--yes", "--failed-ok", code=4)
        assert body["error"] == "WaitsForUnit"
        assert "Jahresbeleg" in body["message"]
        assert "must be validly signed (rksv.md 5" in body["message"]
        assert "--failed-ok" not in body["message"]  # it would not help
        assert till.receipts() == [(1, "start", "signed"), (2, "monthly", "fallback")]
        assert till.waiting() == ["yearly"]
        assert till.outages()[0]["ended_at"] is None
        assert till.sell("still-open")["signature_state"] == "fallback"

    def test_a_waiting_jahresbeleg_names_the_way_out_a_unit_switch(
        self, till: _Till, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The refusal names ``unit switch`` to a working unit (before: only that it waits
        until the unit answers, which one down for good never does), and that way works:
        the switch, recovery (Sammelbeleg and Jahresbeleg signed), then the Schlussbeleg."""
        _set_now(monkeypatch, JAN_2)
        body = till.json("special", REGISTER, "closing", "--yes", "--failed-ok", code=4)
        assert f"till-agent unit switch {REGISTER} UNIT" in body["message"]
        assert f"till-agent outage recover {REGISTER}" in body["message"]
        till("unit", "create-software", "--id", "u2", "--zda", "AT1")
        till("unit", "switch", REGISTER, "u2")
        till("outage", "recover", REGISTER)
        assert till.waiting() == []
        closing = till.json("special", REGISTER, "closing", "--yes", "--failed-ok")
        assert (closing["number"], closing["signature_state"]) == (5, "signed")
        assert till.receipts()[2:] == [
            (3, "sammelbeleg", "signed"),
            (4, "yearly", "signed"),
            (5, "closing", "signed"),
        ]

    def test_a_development_units_outage_ends_owing_no_report(
        self, data_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An AT100 unit's register: its outage ends with the Schlussbeleg, with no report
        date and no ``decommissioned`` level (a development register is not registered in
        FinanzOnline), and the text says so."""
        till = _till(data_dir, monkeypatch)  # create-software's default: AT100
        till("simulate", "unit", "down")
        text = flat(till("special", REGISTER, "closing", "--yes", "--failed-ok").stdout)
        assert "a development register owes no FinanzOnline report" in text
        [outage] = till.outages()
        assert outage["ended_at"] is not None
        assert (outage["report_due_at"], outage["escalations"]) == (None, ["opened"])
        assert till.checks() == []


@pytest.mark.usefixtures("no_system_config")
@pytest.mark.parametrize(
    "unit", [("--zda", "AT1"), ("--key-id", CLOSED_KEY_ID)], ids=["open", "closed"]
)
def test_the_dep_of_a_register_decommissioned_in_an_outage_verifies(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unit: tuple[str, str]
) -> None:
    """Start, a sale signed, a sale with the marker, the Schlussbeleg with the marker: the
    DEP and the container verify (exit 0); the notes count the marker and say the last
    zero receipt may be the Schlussbeleg."""
    till = _till(data_dir, monkeypatch, *unit)
    till.sell("a")
    till("simulate", "unit", "down")
    till.sell("b")
    till("special", REGISTER, "closing", "--yes", "--failed-ok")
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    till("export", "dep", "--register", REGISTER, "-o", dep)
    till("export", "crypto-container", "--register", REGISTER, "-o", container)
    body = json.loads(expect(till.run("verify", dep, container, "--json"), 0).stdout)
    assert body["ok"] is True
    assert body["receipts"] == 4
    assert (body["fallback_receipts"], body["fallback_zero_receipts"]) == (2, 1)
    assert (body["ends_in_outage"], body["open_outage_from"]) == (True, "3")
    assert "decommissioned inside the outage" in body["notes"][-1]

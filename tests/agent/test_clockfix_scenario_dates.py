"""A scenario whose ``dateToUse`` is no receipt date (yyyy-MM-ddTHH:mm:ss, a real date) is
refused before anything is signed: a date signed into field 4 would make a DEP that our
own verifier rejects. The rule is the verifier's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigurationError
from agent.simulate import run_scenario
from factories import VECTORS, Run, expect, load_json

SCENARIO = VECTORS / "official" / "TESTSUITE_TEST_SZENARIO_1.json"


def _scenario(tmp_path: Path, index: int, date: object) -> tuple[Path, str]:
    """Scenario 1 with instruction ``index``'s dateToUse set to ``date`` (a missing one:
    ``...``); returns the file and that instruction's receipt identifier."""
    scenario: dict[str, Any] = load_json(SCENARIO)
    item = scenario["cashBoxInstructionList"][index]
    if date is ...:
        del item["dateToUse"]
    else:
        item["dateToUse"] = date
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario), encoding="utf-8")
    return path, str(item["receiptIdentifier"])


class TestRefusedDates:
    @pytest.mark.parametrize(
        "date",
        [
            "2026-10-25T02:05:00+01:00",  # an offset: field 4 is local time without one
            "2026-02-30T10:00:00",  # no such day
            "2026-10-25 02:05:00",  # a space for the T
            "2026-10-25T02:05",  # no seconds
            20261025,  # no string
            ...,  # none at all
        ],
        ids=["offset", "no-such-day", "space", "no-seconds", "number", "missing"],
    )
    def test_the_error_names_the_instruction_the_field_and_the_rule(
        self, tmp_path: Path, date: object
    ) -> None:
        """Instruction 5 (receipt ID-6) with a bad date: refused with its index, receipt
        identifier, the field and the rule; no output is written."""
        path, receipt_id = _scenario(tmp_path, 5, date)
        out = tmp_path / "out"
        with pytest.raises(ConfigurationError) as caught:
            run_scenario(path, out)
        message = str(caught.value)
        assert "cashBoxInstructionList[5]" in message
        assert receipt_id in message
        assert "dateToUse" in message
        assert "yyyy-MM-ddTHH:mm:ss" in message
        assert not out.exists()

    def test_a_bad_last_date_is_refused_before_the_first_is_signed(self, tmp_path: Path) -> None:
        """The last instruction's date is bad: the run stops before any receipt (no DEP
        with 80 receipts and a bad 81st)."""
        last = len(load_json(SCENARIO)["cashBoxInstructionList"]) - 1
        path, receipt_id = _scenario(tmp_path, last, "2026-10-25T03:00:00Z")
        with pytest.raises(
            ConfigurationError, match=f"cashBoxInstructionList\\[{last}\\]"
        ) as caught:
            run_scenario(path, tmp_path / "out")
        assert receipt_id in str(caught.value)
        assert not (tmp_path / "out").exists()


class TestTheCommand:
    def test_simulate_scenario_exits_2_as_for_other_bad_input(
        self, tmp_path: Path, run: Run
    ) -> None:
        """`simulate scenario` with a bad dateToUse: exit 2 (as for an unreadable scenario),
        the message on stderr, the same in the --json body."""
        path, receipt_id = _scenario(tmp_path, 5, "2026-10-25T02:05:00+01:00")
        out = str(tmp_path / "out")
        result = expect(run("simulate", "scenario", str(path), "--out", out), 2)
        assert "dateToUse '2026-10-25T02:05:00+01:00'" in " ".join(result.stderr.split())
        result = expect(run("simulate", "scenario", str(path), "--out", out, "--json"), 2)
        body = json.loads(result.stdout)
        assert body["error"] == "ConfigurationError"
        assert receipt_id in body["message"]
        assert not (tmp_path / "out").exists()

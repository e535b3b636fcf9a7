"""UnitConfig: a closed system's key id is field 11 of every receipt (reference/rksv.md 1.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.at_rksv._verify_rules import _serial_is_closed
from agent.signing import UnitConfig
from factories import require_vectors


def closed_unit(key_id: str) -> UnitConfig:
    return UnitConfig(id="u", kind="software", zda="AT0", key_file=Path("k"), key_id=key_id)


class TestClosedSystemKeyId:
    @pytest.mark.parametrize(
        "key_id",
        ["U:ATU12345678-K1", "S:123456789-K0", "G:1234567890123-K2", "U:ATU00000000-hsmkey1"],
    )
    def test_an_ordnungsbegriff_with_a_key_id_is_accepted(self, key_id: str) -> None:
        """The forms of the e2e_closed vector and of the official scenarios (S:, U:, G:)."""
        assert closed_unit(key_id).key_id == key_id

    @pytest.mark.parametrize(
        "key_id",
        [
            "K1",  # no Ordnungsbegriff: the review's till that its own verifier refused
            "U:ATU12345678",  # no key id
            "U:ATU12345678-",
            "U:DE123456789-K1",  # not an Austrian UID
            "S:12345678-K1",  # tax number of 8 digits
            "G:123456789012-K1",  # GLN of 12 digits
            "u:ATU12345678-K1",
            "U:ATU12345678-K-1",  # a second '-' (ztp refuses it)
            "U:ATU12345678-K 1",
            "hsm-key-1",
        ],
    )
    def test_anything_else_is_refused_with_an_example(self, key_id: str) -> None:
        """The message names the rule and gives a key id that would do."""
        with pytest.raises(ValidationError, match=r"Ordnungsbegriff-KeyID.*U:ATU12345678-K1"):
            closed_unit(key_id)

    def test_an_underscore_keeps_its_own_message(self) -> None:
        """'_' separates the receipt's fields: the CLI names it as before."""
        with pytest.raises(ValidationError, match="must not contain '_'"):
            closed_unit("U:ATU12345678-K_1")

    @pytest.mark.parametrize(
        "key_id", ["U:ATU12345678-K1", "S:123456789-K0", "G:1234567890123-Kasse7"]
    )
    def test_an_accepted_key_id_is_a_closed_serial_for_the_verifier(self, key_id: str) -> None:
        """What the configuration lets through, our verifier reads as a closed system."""
        assert _serial_is_closed(closed_unit(key_id).key_id or "")

    def test_the_key_ids_of_the_official_scenarios_are_accepted(self) -> None:
        """simulate --closed names its units ``<companyID>-K<n>`` (agent/simulate.py)."""
        files = sorted((require_vectors() / "official").glob("*.json"))
        assert files
        for file in files:
            scenario = json.loads(file.read_text(encoding="utf-8"))
            company = str(scenario.get("companyID", "U:ATU00000000"))
            for i in range(int(scenario.get("numberOfSignatureDevices", 1))):
                closed_unit(f"{company}-K{i}")

"""docs/config.example.toml documents every kind of ``[[units]]`` with every key, and what
the environment can and cannot set of them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import ConfigurationError
from agent.signing.config import UnitConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "config.example.toml"

pytestmark = pytest.mark.usefixtures("no_system_config")


def _unit_examples() -> list[dict[str, Any]]:
    """The example's units: the one set, and each commented-out ``# [[units]]`` block."""
    text = EXAMPLE.read_text(encoding="utf-8")
    units: list[dict[str, Any]] = list(tomllib.loads(text)["units"])
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line != "# [[units]]":
            continue
        block = []
        for following in lines[start + 1 :]:
            if not (pair := re.fullmatch(r"# (\w+ = .*)", following)):
                break
            block.append(pair[1])
        units += tomllib.loads("[[units]]\n" + "\n".join(block))["units"]
    return units


class TestUnitExamples:
    def test_each_kind_has_an_example_that_is_a_valid_unit(self) -> None:
        units = [UnitConfig.model_validate(unit) for unit in _unit_examples()]
        assert {unit.kind for unit in units} == {"software", "pkcs11", "chain"}

    def test_every_unit_key_is_in_an_example(self) -> None:
        written = {key for unit in _unit_examples() for key in unit}
        assert set(UnitConfig.model_fields) - written == set()


class TestUnitsFromTheEnvironment:
    def test_the_whole_list_is_one_variable(self, tmp_path: Path) -> None:
        """TILL_AGENT_UNITS, a TOML array of inline tables, replaces the file's units."""
        env = {
            "TILL_AGENT_DATA_DIR": str(tmp_path),
            "TILL_AGENT_UNITS": '[{id = "hsm", kind = "pkcs11", module = "libsofthsm2.so",'
            ' token_label = "till", key_label = "k1", pin = "4711", zda = "AT1",'
            ' certificate_file = "unit.crt"}]',
        }
        [unit] = load_config(EXAMPLE, env=env).units
        assert (unit.id, unit.pin, unit.certificate_file) == ("hsm", "4711", tmp_path / "unit.crt")

    def test_one_key_of_an_entry_is_refused(self) -> None:
        """TILL_AGENT_UNITS__0__PIN names no table: a configuration error naming it."""
        with pytest.raises(ConfigurationError, match="TILL_AGENT_UNITS__0__PIN"):
            load_config(EXAMPLE, env={"TILL_AGENT_UNITS__0__PIN": "4711"})

"""Malformed and unreadable inputs to the verifier (agent.at_rksv.verify).

Whatever the DEP or the crypto container hold, ``verify`` ends in findings (exit 1,
"INVALID") that name the file at fault, never in a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from agent.at_rksv.verify import CONTAINER, Report, verify_files
from agent.cli import app

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "rksv"
DEP = VECTORS / "e2e_open" / "dep-export.json"
CONTAINER_FILE = VECTORS / "e2e_open" / "cryptographicMaterialContainer.json"
DEPTH = 100_000
DEEP = "[" * DEPTH + "]" * DEPTH
LONG_NUMBER = "1" * 5000  # int() takes 4300 digits

# container text -> what the finding says
BROKEN_CONTAINERS = {
    "not-json": ("# not a container\n", "crypto container is not valid JSON"),
    "deep": (DEEP, "nested too deeply"),
    "deep-value": (f'{{"certificateOrPublicKeyMap": {DEEP}}}', "nested too deeply"),
    "long-number": (f'{{"base64AESKey": {LONG_NUMBER}}}', "a number has more than 4300 digits"),
}


def _places(report: Report) -> list[tuple[str | None, str]]:
    return [(f.receipt, f.rule) for f in report.findings]


def _file(tmp_path: Path, text: str, name: str = "input.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _verify(*args: str | Path) -> Result:
    runner = CliRunner()
    return runner.invoke(app, ["verify", *map(str, args)], prog_name="till-agent")


def _flat(text: str) -> str:
    """Rich wraps at 80 columns: make every run of whitespace one space."""
    return " ".join(text.split())


class TestContainerFindings:
    @pytest.mark.parametrize("name", BROKEN_CONTAINERS)
    def test_broken_container_is_a_finding_at_the_container(
        self, tmp_path: Path, name: str
    ) -> None:
        """One malformed-container finding, at the container, saying what is wrong."""
        text, message = BROKEN_CONTAINERS[name]
        report = verify_files(DEP, _file(tmp_path, text))
        assert _places(report) == [(CONTAINER, "malformed-container")]
        assert message in report.findings[0].message

    @pytest.mark.parametrize("name", BROKEN_CONTAINERS)
    def test_cli_names_the_container(self, tmp_path: Path, name: str) -> None:
        """``verify dep.json broken.json`` exits 1 pointing at the container, no traceback."""
        text, message = BROKEN_CONTAINERS[name]
        result = _verify(DEP, _file(tmp_path, text))
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        out = _flat(result.stdout)
        assert "malformed-container at (container): " in out
        assert message in out
        assert "(DEP)" not in out
        assert "INVALID" in out


class TestDepFindings:
    def test_deeply_nested_dep_value_is_a_finding(self, tmp_path: Path) -> None:
        """Nesting deeper than the decoder recurses, inside a value the stream decodes."""
        dep = _file(tmp_path, f'{{"x": {DEEP}, "Belege-Gruppe": []}}')
        report = verify_files(dep, CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "nested too deeply" in report.findings[0].message

    def test_long_number_in_the_dep_is_a_finding(self, tmp_path: Path) -> None:
        dep = _file(tmp_path, f'{{"x": {LONG_NUMBER}, "Belege-Gruppe": []}}')
        report = verify_files(dep, CONTAINER_FILE)
        assert _places(report) == [(None, "malformed-dep")]
        assert "a number has more than 4300 digits" in report.findings[0].message

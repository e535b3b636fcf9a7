"""Malformed and unreadable inputs to the verifier (agent.at_rksv.verify).

Whatever the DEP or the crypto container hold, ``verify`` ends in findings (exit 1,
"INVALID") that name the file at fault, never in a traceback.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from agent.at_rksv.verify import CONTAINER, Report, verify_files
from agent.cli import app

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "rksv"
DEP = VECTORS / "e2e_open" / "dep-export.json"


def _places(report: Report) -> list[tuple[str | None, str]]:
    return [(f.receipt, f.rule) for f in report.findings]


def _verify(*args: str | Path) -> Result:
    runner = CliRunner()
    return runner.invoke(app, ["verify", *map(str, args)], prog_name="till-agent")


def _flat(text: str) -> str:
    """Rich wraps at 80 columns: make every run of whitespace one space."""
    return " ".join(text.split())


class TestContainerFindings:
    def test_container_problem_is_at_the_container(self, tmp_path: Path) -> None:
        """A container that is not JSON is a malformed-container finding, not the DEP's."""
        text = tmp_path / "notes.md"
        text.write_text("# not a container\n", encoding="utf-8")
        assert _places(verify_files(DEP, text)) == [(CONTAINER, "malformed-container")]

    def test_cli_names_the_container(self, tmp_path: Path) -> None:
        """``verify dep.json notes.md`` exits 1 pointing at the container."""
        text = tmp_path / "notes.md"
        text.write_text("# not a container\n", encoding="utf-8")
        result = _verify(DEP, text)
        assert result.exit_code == 1, result.output
        out = _flat(result.stdout)
        assert "malformed-container at (container): crypto container is not valid JSON" in out
        assert "(DEP)" not in out
        assert "INVALID" in out

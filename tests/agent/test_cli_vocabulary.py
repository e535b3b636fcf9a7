"""One vocabulary for scripts: the command line's JSON says what the local API says.

``outage list --json``, ``outage show --json`` and ``outage export``'s JSON file name an
outage's fields as ``GET /v1/outages`` does, with its times (UTC, ``Z``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.outage_view import OutageOut
from factories import sale

API_FIELDS = [field.alias or name for name, field in OutageOut.model_fields.items()]
CLI_ONLY = ["probe_attempts", "age_seconds", "checked_at"]
STAMPS = ("started_at", "ended_at", "report_due_at", "end_report_due_at", "checked_at")


@pytest.fixture(name="cli")
def _cli(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
    runner = CliRunner()

    def cli(*args: str | Path, input: str | None = None) -> str:
        argv = [*(str(a) for a in args), "--data-dir", str(data_dir)]
        result = runner.invoke(app, argv, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result.stdout

    return cli


@pytest.fixture(name="closed_outage")
def _closed_outage(cli: Any) -> None:
    """Outage 1 of KASSE-1, closed by its Sammelbeleg, with a report due and made."""
    cli("unit", "create-software", "--id", "dev", "--simulate")
    cli("init", "KASSE-1", "--unit", "dev")
    cli("simulate", "unit", "down")
    cli("issue", "-", input=json.dumps(sale(request_id="a")))
    cli("simulate", "unit", "up")
    cli("outage", "recover", "KASSE-1")
    cli("outage", "report", "1", "--reference", "FON-1")


def _as_the_api_has_it(outage: dict[str, Any]) -> None:
    assert list(outage) == API_FIELDS + CLI_ONLY
    shared = {name: outage[name] for name in API_FIELDS}
    assert OutageOut.model_validate(shared).model_dump(mode="json") == shared
    assert (outage["register"], outage["unit"], outage["report_reference"]) == (
        "KASSE-1",
        "dev",
        "FON-1",
    )
    for name in STAMPS:
        assert outage[name] is None or outage[name].endswith("Z"), (name, outage[name])
    assert outage["started_at"] < outage["ended_at"]


def test_outage_list_json_uses_the_api_names(cli: Any, closed_outage: None) -> None:
    [outage] = json.loads(cli("outage", "list", "--json"))
    _as_the_api_has_it(outage)


def test_outage_show_and_export_use_the_api_names(
    cli: Any, closed_outage: None, tmp_path: Path
) -> None:
    shown = json.loads(cli("outage", "show", "1", "--json"))
    _as_the_api_has_it(shown["outage"])
    cli("outage", "export", "1", "-o", tmp_path)
    exported = json.loads((tmp_path / "outage-1.json").read_text())
    assert exported == shown
    text = (tmp_path / "outage-1.txt").read_text()
    assert "Kasse (register):        KASSE-1\n" in text
    assert "Einheit (unit):          dev\n" in text
    assert "Meldung (report ref):    FON-1\n" in text

"""``till-agent outage ...`` and ``till-agent simulate unit ...`` end to end, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from agent.cli import app
from factories import sale

REGISTER = "KASSE-1"


@pytest.fixture(name="run")
def _run(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)
    runner = CliRunner()

    def run(*args: str | Path, code: int = 0, input: str | None = None) -> Result:
        extra = [] if args[0] in ("verify", "bench") else ["--data-dir", str(data_dir)]
        result = runner.invoke(app, [*(str(a) for a in args), *extra], input=input)
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    return run


def _issue(run: Any, request_id: str) -> dict[str, Any]:
    raw = json.dumps(sale(request_id=request_id))
    return dict(json.loads(run("issue", "-", "--json", input=raw).stdout))


def test_a_simulated_outage_from_the_command_line(run: Any, tmp_path: Path) -> None:
    run("unit", "create-software", "--id", "dev", "--simulate")
    run("init", REGISTER, "--unit", "dev")
    assert _issue(run, "a")["signature_state"] == "signed"
    switched = json.loads(run("simulate", "unit", "down", "--json").stdout)
    assert switched == {"units": ["dev"], "mode": "down"}
    assert _issue(run, "b")["signature_state"] == "fallback"
    assert _issue(run, "c")["signature_state"] == "fallback"
    run("outage", "recover", REGISTER, code=4)  # still down: nothing issued

    [listed] = json.loads(run("outage", "list", "--json").stdout)
    assert (listed["id"], listed["ended_at"], listed["affected"]) == (1, None, 2)
    assert "opened" in listed["escalations"] or listed["escalations"] == []

    run("simulate", "unit", "up")
    recovered = json.loads(run("outage", "recover", REGISTER, "--json").stdout)
    assert recovered["issued"] == [{"number": 5, "kind": "sammelbeleg", "state": "signed"}]

    run("outage", "report", "1", "--reference", "FON-4711")
    run("outage", "report", "1", "--reference", "FON-4712", "--end")
    text = run("outage", "show", "1").stdout
    assert "Ursache (cause):" in text
    assert "FON-4711" in text
    assert "Sammelbeleg: number 5" in text
    run("outage", "export", "1", "-o", tmp_path / "pack")
    pack = json.loads((tmp_path / "pack" / "outage-1.json").read_text())
    assert [r["number"] for r in pack["affected_receipts"]] == [3, 4]
    assert pack["sammelbeleg"]["number"] == 5
    assert [r["kind"] for r in pack["reports"]] == ["outage.reported", "outage.reported"]
    assert pack["outage"]["end_report_reference"] == "FON-4712"
    assert (tmp_path / "pack" / "outage-1.txt").read_text().startswith("Ausfall")

    run("export", "dep", "--register", REGISTER, "-o", tmp_path / "dep.json")
    run("export", "crypto-container", "--register", REGISTER, "-o", tmp_path / "c.json")
    run("verify", tmp_path / "dep.json", tmp_path / "c.json")


def test_an_evidence_pack_never_replaces_a_read_only_file(run: Any, tmp_path: Path) -> None:
    """An earlier pack kept read-only (0444) is not written over: exit 2 naming --output,
    nothing written."""
    run("unit", "create-software", "--id", "dev", "--simulate")
    run("init", REGISTER, "--unit", "dev")
    run("simulate", "unit", "down")
    _issue(run, "b")
    pack = tmp_path / "pack"
    pack.mkdir()
    kept = pack / "outage-1.json"
    kept.write_text("kept")
    kept.chmod(0o444)
    refused = run("outage", "export", "1", "-o", pack, code=2)
    assert "--output" in refused.stderr
    assert "read-only" in refused.stderr
    assert kept.read_text() == "kept"
    assert not (pack / "outage-1.txt").exists()


def test_only_simulated_units_can_be_switched(run: Any) -> None:
    run("unit", "create-software", "--id", "real")
    error = run("simulate", "unit", "down", "--json", code=3).stdout
    assert json.loads(error)["rule"] == "simulated-unit"


def test_unknown_outage_and_bad_mode(run: Any) -> None:
    run("unit", "create-software", "--id", "dev", "--simulate")
    run("outage", "show", "7", code=6)
    run("simulate", "unit", "sideways", code=2)
    run("outage", "report", "7", "--reference", "x", code=6)
    # a mistyped Kassen-ID is not found, not an empty list or a unit that does not answer
    listed = run("outage", "list", "--register", "KASSE-9", code=6)
    assert "register 'KASSE-9' is not initialized" in listed.stderr
    assert "KASSE-9 is not initialized" in run("outage", "recover", "KASSE-9", code=6).stderr


def test_bench_outage_reports_its_keys(run: Any) -> None:
    """The command runs end to end (figures are for the note, not asserted as timings)."""
    out = run(
        "bench", "outage", "--n", "20", "--deadline", "0.2", "--probe-interval", "0.2", "--json"
    ).stdout
    data = json.loads(out)
    assert set(data) >= {"first_ms", "open_p99_ms", "recovery_s", "deadline_ms", "probe_interval_s"}
    assert data["first_ms"] >= data["deadline_ms"]  # the first receipt met the hanging unit
    assert data["n"] == 20

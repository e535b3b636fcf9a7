"""A till with several registers, seen by real ``till-agent run`` and ``config check``
processes: ``/v1/status`` shows one state per unit, whichever register it is shown for."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import TILL_AGENT, Launch, TcpPrinter, agent_config, agent_env
from e2e.test_run import client_for
from factories import sale


def _till(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``till-agent ARGS`` as its own process, configured by nothing but its arguments."""
    return subprocess.run(
        [str(TILL_AGENT), *(str(a) for a in args)],
        env=agent_env(home, {"COLUMNS": "400"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(home: Path, *args: str | Path) -> str:
    done = _till(home, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _units(data_dir: Path, *ids: str) -> dict[str, Any]:
    """``[[units]]`` entries (as ``agent_config`` tables cannot write lists) for software
    units made with ``unit create-software``."""
    return {
        unit: {
            "id": unit,
            "kind": "software",
            "zda": "AT100",
            "key_file": str(data_dir / "keys" / f"{unit}.key.pem"),
            "certificate_file": str(data_dir / "keys" / f"{unit}.cert.pem"),
        }
        for unit in ids
    }


def _config(
    tmp_path: Path, data_dir: Path, printer: TcpPrinter, *units: str, **settings: Any
) -> Path:
    """``agent_config`` plus ``[[units]]`` for the ``units`` named, and top-level keys."""
    path = agent_config(
        tmp_path / "till.toml",
        data_dir,
        printer_port=printer.port,
        backup={"dir": str(tmp_path / "backups")},
        **{k: v for k, v in settings.items() if isinstance(v, dict)},
    )
    top = "".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n"
        for k, v in settings.items()
        if not isinstance(v, dict)
    )
    tables = "".join(
        "\n[[units]]\n" + "".join(f'{k} = "{v}"\n' for k, v in unit.items())
        for unit in _units(data_dir, *units).values()
    )
    path.write_text(top + path.read_text(encoding="utf-8") + tables, encoding="utf-8")
    return path


@pytest.fixture(name="home")
def _home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(name="data_dir")
def _data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_status_shows_one_state_per_shared_unit(
    launch: Launch, tmp_path: Path, home: Path, data_dir: Path, printer: TcpPrinter
) -> None:
    """BAR and TERRASSE sign with unit shared, which goes down; a sale on BAR opens its
    outage: the unit is down for both registers, the outage only BAR's."""
    _ok(home, "unit", "create-software", "--id", "shared", "--simulate", "--data-dir", data_dir)
    for register in ("BAR", "TERRASSE"):
        _ok(home, "init", register, "--unit", "shared", "--data-dir", data_dir)
    config = _config(
        tmp_path, data_dir, printer, register={"id": "BAR"}, probe={"initial_s": 60, "max_s": 60}
    )
    agent = launch(config)
    agent.wait_ready()
    with client_for(agent, data_dir) as client:
        ok = client.post("/v1/receipts", json=sale(register="TERRASSE", request_id="t1"))
        assert ok.json()["signature_state"] == "signed", ok.text
        _ok(home, "simulate", "unit", "down", "--unit", "shared", "--data-dir", data_dir)
        down = client.post("/v1/receipts", json=sale(register="BAR", request_id="b1"))
        assert down.json()["signature_state"] == "fallback", down.text
        status = client.get("/v1/status").json()
    assert agent.terminate() == 0, agent.tail()
    shown = {r["register"]: r for r in status["registers"]}
    assert {r: shown[r]["unit"]["state"] for r in shown} == {"BAR": "down", "TERRASSE": "down"}
    assert shown["BAR"]["open_outage"] is not None
    assert shown["TERRASSE"]["open_outage"] is None

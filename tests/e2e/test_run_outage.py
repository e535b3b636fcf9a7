"""An outage while `till-agent run` runs: the development unit switched from the CLI.

`till-agent simulate unit down` (a separate process) makes the running service's unit
fail: API sales get fallback receipts at once, the status shows the open outage with its
deadlines; `simulate unit up` lets the service's own probe issue the Sammelbeleg, and the
DEP of the day verifies. The outage report is recorded over the API (a register on the
development unit owes no Belegcheck).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from e2e.harness import TILL_AGENT, Launch, TcpPrinter, agent_config
from factories import sale


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TILL_AGENT), *(str(a) for a in args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_unit_goes_down_and_comes_back_while_the_service_runs(
    launch: Launch, printer: TcpPrinter, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = agent_config(
        tmp_path / "till.toml",
        data,
        printer_port=printer.port,
        probe={"initial_s": 0.3, "max_s": 0.5, "jitter": 0.0},
    )
    agent = launch(config)
    agent.wait_ready()
    url = agent.api_url()
    token = (data / "api-token").read_text().strip()
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:

        def sell(request_id: str) -> dict[str, Any]:
            response = client.post("/v1/receipts", content=json.dumps(sale(request_id=request_id)))
            assert response.status_code == 201, response.text
            return dict(response.json())

        assert sell("a")["signature_state"] == "signed"
        down = _cli("simulate", "unit", "down", "--data-dir", data)
        assert down.returncode == 0, down.stderr
        assert sell("b")["signature_state"] == "fallback"
        started = time.monotonic()
        assert sell("c")["signature_state"] == "fallback"
        assert time.monotonic() - started < 1.0  # the breaker is open: no wait for the unit
        [register] = client.get("/v1/status").json()["registers"]
        outage = register["open_outage"]
        assert outage is not None
        assert register["unit"] == {"id": "dev-uncertified", "state": "down", "certified": False}
        assert outage["affected"] == 2
        assert outage["deadline_48h_at"] > outage["started_at"]
        assert "sammelbeleg" in register["waiting_special"]

        up = _cli("simulate", "unit", "up", "--data-dir", data)
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 20
        while client.get("/v1/status").json()["registers"][0]["open_outage"] is not None:
            assert time.monotonic() < deadline, agent.tail()
            time.sleep(0.1)
        [closed] = client.get("/v1/outages").json()
        assert closed["sammelbeleg_number"] == 5
        assert sell("d")["signature_state"] == "signed"
        # the service holds the data directory: the CLI records the report over the API
        reported = _cli(
            "outage",
            "report",
            "1",
            "--reference",
            "FON-2026-1",
            "--data-dir",
            data,
            env={"TILL_AGENT_CONFIG": str(config)},
        )
        assert reported.returncode == 0, reported.stdout + reported.stderr
        [closed] = client.get("/v1/outages").json()
        assert closed["report_reference"] == "FON-2026-1"
        # a register on the development unit owes no Belegcheck: asked over the API too,
        # recording one is exit 6 (not owed)
        assert client.get("/v1/status").json()["registers"][0]["open_checks"] == []
        checked = _cli(
            "checks",
            "done",
            "KASSE-1",
            "start",
            "--reference",
            "BC-2026-1",
            "--data-dir",
            data,
            env={"TILL_AGENT_CONFIG": str(config)},
        )
        assert checked.returncode == 6, checked.stdout + checked.stderr
        # and a reprint goes to the service's printer, marked as a copy
        reprinted = _cli("reprint", "KASSE-1", "2", "--config", config, "--json")
        assert reprinted.returncode == 0, reprinted.stdout + reprinted.stderr
        assert json.loads(reprinted.stdout)["copy"] == 1
        assert printer.wait_until(lambda jobs: any(b"KOPIE" in job for job in jobs), 10)
    assert agent.terminate() == 0
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    for args in (
        ("export", "dep", "--register", "KASSE-1", "-o", dep),
        ("export", "crypto-container", "--register", "KASSE-1", "-o", container),
        ("verify", dep, container),
    ):
        done = _cli(*args, *(("--data-dir", data) if args[0] == "export" else ()))
        assert done.returncode == 0, done.stdout + done.stderr

"""`till-agent checks done` against a running `till-agent run`, for a register that owes its
Belegcheck: one on a production unit (a self-signed software unit under AT1; a register on
the development unit owes none, tests/agent/test_devfix2_dev_checks.py).

The service holds the data directory, so the command records the check over the local API:
the first reference is recorded (exit 0) and the check is no longer open; another reference
for the same check is refused (exit 3), the first one stands.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from e2e.harness import TILL_AGENT, Launch, TcpPrinter, agent_config, agent_env
from e2e.test_run import client_for

REGISTER = "BAR"
UNIT = "prod"


def _till(
    home: Path, *args: str | Path, config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``till-agent ARGS`` as its own process; ``config``: the running service's."""
    extra = {"COLUMNS": "400"} | ({"TILL_AGENT_CONFIG": str(config)} if config else {})
    return subprocess.run(
        [str(TILL_AGENT), *(str(a) for a in args)],
        env=agent_env(home, extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _production_till(tmp_path: Path, home: Path, printer: TcpPrinter) -> Path:
    """Register BAR with its Startbeleg on unit ``prod`` (AT1), and a configuration that
    runs it (no development unit); the configuration's path."""
    data_dir = tmp_path / "data"
    for args in (
        ("unit", "create-software", "--id", UNIT, "--zda", "AT1"),
        ("init", REGISTER, "--unit", UNIT),
    ):
        done = _till(home, *args, "--data-dir", data_dir)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    config = agent_config(
        tmp_path / "till.toml",
        data_dir,
        printer_port=printer.port,
        register={"id": REGISTER},
        backup={"dir": str(tmp_path / "backups")},
    )
    config.write_text("development_unit = false\n" + config.read_text(encoding="utf-8"))
    return config


def test_checks_done_records_the_startbeleg_check_once_over_the_api(
    launch: Launch, tmp_path: Path, printer: TcpPrinter
) -> None:
    """BAR's Startbeleg check is open (not overdue) in /v1/status; `checks done BAR start
    --reference BC-2026-1` exits 0 and closes it; `--reference BC-2026-2` then exits 3
    naming the reference recorded, and `checks list` still shows BC-2026-1."""
    home = tmp_path / "home"
    config = _production_till(tmp_path, home, printer)
    data_dir = tmp_path / "data"
    agent = launch(config)
    agent.wait_ready()
    with client_for(agent, data_dir) as client:
        [register] = client.get("/v1/status").json()["registers"]
        assert register["register"] == REGISTER
        assert register["unit"]["id"] == UNIT
        [check] = register["open_checks"]
        assert (check["kind"], check["overdue"]) == ("start", False)

        done = _till(
            home, "checks", "done", REGISTER, "start", "--reference", "BC-2026-1", config=config
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert client.get("/v1/status").json()["registers"][0]["open_checks"] == []

        again = _till(
            home, "checks", "done", REGISTER, "start", "--reference", "BC-2026-2", config=config
        )
        assert again.returncode == 3, again.stdout + again.stderr
        assert "BC-2026-1" in again.stdout + again.stderr
    listed = _till(home, "checks", "list", "--all", "--json", config=config)
    assert agent.terminate() == 0, agent.tail()
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "BC-2026-1" in listed.stdout
    assert "BC-2026-2" not in listed.stdout

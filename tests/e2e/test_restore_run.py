"""``till-agent restore`` against a real ``till-agent run``: refused while the service holds
the data directory, and refused after the service was killed when the backup is older than
its last receipts (which are still in its -wal): the operations review's F1 with the
service as it runs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from e2e.harness import TILL_AGENT, Launch, agent_env, write_config
from e2e.test_run import client_for
from factories import sale
from storage.db import DB_FILE


def _config(tmp_path: Path, data_dir: Path) -> Path:
    settings = {
        "data_dir": data_dir,
        "printer": {"kind": "none"},
        "api": {"port": 0},
        "backup": {"dir": tmp_path / "backups"},
    }
    return write_config(tmp_path / "till.toml", settings)


def _restore(tmp_path: Path, backup: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TILL_AGENT), "restore", str(backup), "--data-dir", str(data_dir), "--json"],
        env=agent_env(tmp_path / "home", {"COLUMNS": "400"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _backup(data_dir: Path, target: Path) -> Path:
    """README's ``sqlite3 till.sqlite3 ".backup FILE"`` while the service runs."""
    source, copy = sqlite3.connect(data_dir / DB_FILE), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return target


def test_restore_is_refused_while_the_service_runs(launch: Launch, tmp_path: Path) -> None:
    """Exit 5 as every command that meets the held lock, saying to stop the service;
    nothing is moved and the service goes on selling."""
    data_dir = tmp_path / "data"
    agent = launch(_config(tmp_path, data_dir))
    agent.wait_ready()
    with client_for(agent, data_dir) as client:
        assert client.post("/v1/receipts", json=sale(request_id="a")).status_code == 201
        backup = _backup(data_dir, tmp_path / "backup.sqlite3")
        done = _restore(tmp_path, backup, data_dir)
        assert done.returncode == 5, done.stdout + done.stderr
        body = json.loads(done.stdout)
        assert body["error"] == "DataDirLocked"
        assert "another till-agent process is writing to" in body["message"]
        assert "stop the service first" in body["message"]
        assert not list(data_dir.glob("replaced-*"))
        assert not list(data_dir.glob(f".{DB_FILE}.*.tmp"))
        after = client.post("/v1/receipts", json=sale(request_id="b"))
        assert (after.status_code, after.json()["number"]) == (201, 3)
    assert agent.terminate() == 0


def test_a_killed_services_wal_counts_against_an_older_backup(
    launch: Launch, tmp_path: Path
) -> None:
    """The backup ends at receipt 3, the killed service had answered up to 5 (still in its
    -wal): refused, exit 4, the -wal untouched; the service started again goes on at 6."""
    data_dir = tmp_path / "data"
    config = _config(tmp_path, data_dir)
    agent = launch(config)
    agent.wait_ready()
    with client_for(agent, data_dir) as client:
        for request_id in ("a", "b"):
            assert client.post("/v1/receipts", json=sale(request_id=request_id)).status_code == 201
        backup = _backup(data_dir, tmp_path / "backup.sqlite3")
        for request_id in ("c", "d"):
            assert client.post("/v1/receipts", json=sale(request_id=request_id)).status_code == 201
    agent.kill()
    wal = (data_dir / f"{DB_FILE}-wal").read_bytes()
    assert wal

    done = _restore(tmp_path, backup, data_dir)
    assert done.returncode == 4, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["registers"] == [{"register": "KASSE-1", "backup_number": 3, "current_number": 5}]
    assert (data_dir / f"{DB_FILE}-wal").read_bytes() == wal

    again = launch(config)
    again.wait_ready()
    with client_for(again, data_dir) as client:
        response = client.post("/v1/receipts", json=sale(request_id="e"))
        assert (response.status_code, response.json()["number"]) == (201, 6)
    assert again.terminate() == 0

"""A service restarted on a full data disk (after a SIGKILL, systemd starts it again) cannot
write ``<data_dir>/api-address`` at its start: it names it as soon as there is room, so
``till-agent reprint`` (and every command that asks the service with ``[api] port = 0``)
reaches it without a restart.

The data directory is on a real 16 MiB tmpfs, filled with zeros once the first process was
killed (the file it left removed); the second runs on the full disk until the zeros go."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from smallfs import fill_up, small_tmpfs

from e2e.harness import TILL_AGENT, Launch, TcpPrinter, agent_config, agent_env

REGISTER = "KASSE-1"


@pytest.fixture(name="small_fs")
def _small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs (:func:`smallfs.small_tmpfs`)."""
    with small_tmpfs(tmp_path, "16m") as mount:
        yield mount


def _sale(request_id: str) -> str:
    return json.dumps(
        {
            "request_id": request_id,
            "register": REGISTER,
            "kind": "standard",
            "lines": [{"text": "x", "qty": "1", "unit_price": "1.00", "vat": "normal"}],
            "payments": [{"method": "cash", "amount": "1.00"}],
        }
    )


def test_the_api_address_is_named_once_the_full_disk_has_room(
    launch: Launch, tmp_path: Path, printer: TcpPrinter, small_fs: Path
) -> None:
    data_dir, home = small_fs / "data", tmp_path / "home"
    address = data_dir / "api-address"
    config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
    first = launch(config)
    first.wait_ready()
    url = first.api_url()
    token = (data_dir / "api-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(20):  # a WAL the restart finds again
        httpx.post(f"{url}/v1/receipts", content=_sale(f"a{i}"), headers=headers, timeout=30)
    assert first.kill() == -signal.SIGKILL
    address.unlink()  # its block would be the room for the new one
    filler = fill_up(small_fs)

    second = launch(config)
    second.wait_ready()
    again = second.api_url()  # listening, but the full disk took no file
    assert "cannot name the API address" in second.output()
    assert not address.exists()
    filler.unlink()  # room again
    deadline = time.monotonic() + 10
    while not address.exists():
        assert time.monotonic() < deadline, f"api-address never named:\n{second.tail()}"
        time.sleep(0.05)
    assert address.read_text() == f"{again}\n"
    done = subprocess.run(
        [str(TILL_AGENT), "reprint", REGISTER, "2", "--config", str(config), "--json"],
        env=agent_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["copy"] == 1
    assert second.terminate() == 0, second.tail()
    assert not address.exists()

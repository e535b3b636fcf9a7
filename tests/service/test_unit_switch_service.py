"""``till-agent unit switch`` and the till service: refused while it holds the data
directory (as ``special`` and ``outage recover``), and after the switch the service's own
recovery ends the outage with a Sammelbeleg the new unit signs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from service.conftest import Start
from typer.testing import Result

from agent.service import TillService
from factories import cli_run, expect, sale

pytestmark = pytest.mark.usefixtures("no_system_config")

REGISTER = "KASSE-1"
FAST_PROBE = {"initial_s": 0.2, "max_s": 0.3, "jitter": 0.0}

Till = Callable[..., Result]


@pytest.fixture(name="till")
def _till(data_dir: Path) -> Till:
    """The command line on ``data_dir``; u1 and u2 (both switchable) and KASSE-1 on them,
    signing with u1, which is down: one fallback sale, the outage open."""
    run = cli_run()

    def till(*args: str | Path, code: int = 0, input: str | None = None) -> Result:
        return expect(run(*args, "--data-dir", data_dir, input=input), code)

    for unit in ("u1", "u2"):
        till("unit", "create-software", "--id", unit, "--simulate")
    till("init", REGISTER, "--unit", "u1", "--unit", "u2")
    till("simulate", "unit", "down", "--unit", "u1")
    issued = till("issue", "-", "--json", input=json.dumps(sale()))
    assert json.loads(issued.stdout)["signature_state"] == "fallback"
    return till


def test_a_running_service_holds_the_data_directory(till: Till, start: Start) -> None:
    """Exit 5, saying to stop the service, switch and start it again; nothing changed."""
    service = start(probe=FAST_PROBE)
    refused = till("unit", "switch", REGISTER, "u2", code=5)
    said = " ".join(refused.stderr.split())
    assert "another till-agent process is writing" in said
    assert "stop it (systemctl stop till-agent), run this command again" in said
    with service.db.read_connection() as conn:
        assert conn.execute("SELECT active_unit FROM registers").fetchone()[0] == "u1"


def test_the_service_recovers_with_the_new_unit_by_itself(till: Till, start: Start) -> None:
    """Switched while the service was stopped: once it runs, its probe asks u2, which
    answers, and the Sammelbeleg u2 signs closes the outage; the next sale is signed."""
    till("unit", "switch", REGISTER, "u2")
    service = start(probe=FAST_PROBE)
    deadline = time.monotonic() + 20
    while _sammelbeleg(service) is None:  # (committed: the outage book knows it before)
        assert time.monotonic() < deadline, "the outage stayed open"
        time.sleep(0.05)
    with service.db.read_connection() as conn:
        rows = conn.execute("SELECT number, kind, signature_state, unit_id FROM receipts")
        receipts = [tuple(r) for r in rows]
    assert receipts[-1] == (3, "sammelbeleg", "signed", "u2")
    assert _sammelbeleg(service) == 3
    issued = service.backend.issue_sale(json.dumps(sale(request_id="after")).encode())
    assert issued.signature_state == "signed"


def _sammelbeleg(service: TillService) -> int | None:
    """The number of the Sammelbeleg that ended the register's outage, once committed."""
    with service.db.read_connection() as conn:
        row = conn.execute("SELECT sammelbeleg_number FROM outages").fetchone()
    return None if row is None or row[0] is None else int(row[0])

"""A development till an earlier version switched to a certified unit (``unit switch`` now
refuses it), as seen by the service and ``config check`` (the unit a register signs with
now decides, not the units it ever had), and the local API records one switch's check
among several (``number``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service.conftest import Start

from agent.api import create_app, serve
from agent.api_backend import ServiceBackend
from agent.receipts import ReceiptService
from agent.signing import UnitConfig, create_software_unit
from agent.signing.registry import UnitRegistry
from agent.unit_switch import switch_unit
from factories import Run, add_unit, cli_run, expect, flat, sale
from storage import TillDB

pytestmark = pytest.mark.usefixtures("no_system_config")

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(name="run")
def _run() -> Run:
    return cli_run()


@pytest.fixture(name="live")
def _live(start: Start, run: Run, data_dir: Path) -> None:
    """KASSE-1 made by a first `run` on the defaults (the development unit), then switched
    to the certified software unit c2 (AT1) with the service stopped, as an earlier version
    did (played in SQL: `unit switch` refuses it now, development-to-registered)."""
    start().stop()
    expect(run("unit", "create-software", "--id", "c2", "--zda", "AT1", "--data-dir", data_dir), 0)
    refused = run("unit", "switch", "KASSE-1", "c2", "--data-dir", data_dir)
    assert "[development-to-registered]" in flat(refused.stderr)
    expect(refused, 3)
    conn = sqlite3.connect(data_dir / "till.sqlite3")
    try:
        with conn:
            conn.execute("INSERT INTO register_units VALUES ('KASSE-1', 1, 'c2')")
            conn.execute("UPDATE registers SET active_unit = 'c2'")
    finally:
        conn.close()


@pytest.mark.usefixtures("live")
class TestADevelopmentTillSwitchedToACertifiedUnit:
    def test_run_starts_under_development_unit_false(self, start: Start) -> None:
        """KASSE-1 signs with c2 now: the start is not refused (it was: "signs with the
        development unit dev-uncertified"), and its next sale is signed by c2."""
        service = start(development_unit=False)
        issued = service.receipts.issue(sale())
        assert (issued.signature_state, issued.qr[:13]) == ("signed", "_R1-AT1_KASSE")

    def test_config_check_accepts_it(self, run: Run, tmp_path: Path, data_dir: Path) -> None:
        """`config check` under development_unit = false: exit 0 (it was exit 3 naming
        development_unit and KASSE-1)."""
        config = tmp_path / "prod.toml"
        config.write_text(
            f'data_dir = "{data_dir}"\ndevelopment_unit = false\n'
            f'[backup]\ndir = "{tmp_path / "backups"}"\n',
            encoding="utf-8",
        )
        checked = run("config", "check", "--config", config)
        assert "development_unit" not in flat(checked.stderr)
        expect(checked, 0)


@pytest.fixture(name="client")
def _client(
    service: ReceiptService, db: TillDB, registry: UnitRegistry, tmp_path: Path
) -> Iterator[httpx.Client]:
    """The API of KASSE-1 switched twice (to u2, a sale, to u3, a sale): the unit checks
    of receipts 2 and 3 are open."""
    for number, name in enumerate(("u2", "u3"), start=2):
        key, cert = create_software_unit(tmp_path / "units", name=name)
        config = UnitConfig(
            id=name, kind="software", zda="AT1", key_file=key, certificate_file=cert
        )
        add_unit(db, registry, config)
        with db.write_connection().transaction() as conn:
            assert switch_unit(conn, "KASSE-1", name, service.clock.now()).from_number == number
        service.issue(sale(request_id=f"r-{name}"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serve(create_app(ServiceBackend(service), token=TOKEN), port=0) as server,
        httpx.Client(base_url=server.url, headers=auth, timeout=10.0) as client,
    ):
        yield client


class TestTheUnitCheckRoute:
    URL = "/v1/registers/KASSE-1/checks/unit"

    def test_the_same_reference_again_is_the_check_it_recorded(
        self, client: httpx.Client, db: TillDB
    ) -> None:
        """The latest switch's check is recorded, and a retry answers it again (it closed
        the other open check with the same reference)."""
        first = client.post(self.URL, json={"reference": "FON-U3"})
        again = client.post(self.URL, json={"reference": "FON-U3"})
        assert first.status_code == again.status_code == 200, again.text
        assert first.json() == again.json()
        assert first.json()["number"] == 3
        open_checks = client.get("/v1/status").json()["registers"][0]["open_checks"]
        assert [(c["kind"], c["number"]) for c in open_checks] == [("start", 1), ("unit", 2)]

    def test_number_names_the_switch(self, client: httpx.Client) -> None:
        """`number` records the first switch's check; a number no check has is 404, a
        number below 1 is 422 naming the field."""
        named = client.post(self.URL, json={"reference": "FON-U2", "number": 2})
        assert (named.status_code, named.json()["number"]) == (200, 2), named.text
        assert client.post(self.URL, json={"reference": "X", "number": 9}).status_code == 404
        bad = client.post(self.URL, json={"reference": "X", "number": 0})
        assert (bad.status_code, bad.json()["field"]) == (422, "number")

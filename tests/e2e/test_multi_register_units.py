"""A till with several registers, seen by real ``till-agent run`` and ``config check``
processes: ``development_unit = false`` holds for every register that may still sign, not
only the configured one; ``[[units]]`` may list the units of every register; a missing key
file of another register's unit fails the check; and ``/v1/status`` shows one state per
unit, whichever register it is shown for."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import TILL_AGENT, Launch, TcpPrinter, agent_config, agent_env
from e2e.test_run import client_for
from factories import flat, sale

DEV = "dev-uncertified"


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


def _check(home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return _till(home, "config", "check", "--config", config)


@pytest.fixture(name="home")
def _home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(name="data_dir")
def _data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


class TestDevelopmentUnitOnAnotherRegister:
    def test_the_readme_way_off_the_defaults_closes_kasse_1_first(
        self, launch: Launch, tmp_path: Path, home: Path, data_dir: Path, printer: TcpPrinter
    ) -> None:
        """A first `run` on the defaults made KASSE-1 on the development unit; the README's
        way to production (`init BAR --unit prod`, `[register] id = BAR`,
        `development_unit = false`) leaves KASSE-1 active. `config check` refuses it,
        naming KASSE-1, its unit and the Schlussbeleg; `run` starts (stopping would stop
        BAR's sales too), logs that at ERROR and refuses KASSE-1's sales (409, nothing
        signed with the uncertified key, no number used) while BAR signs; once KASSE-1 is
        closed, the check passes."""
        first = launch(_config(tmp_path, data_dir, printer))
        first.wait_ready()
        with client_for(first, data_dir) as client:  # its answer is lost on the way back
            lost = client.post("/v1/receipts", json=sale(register="KASSE-1", request_id="k-lost"))
        assert first.terminate() == 0, first.tail()
        assert lost.status_code == 201, lost.text
        _ok(home, "unit", "create-software", "--id", "prod", "--data-dir", data_dir)
        _ok(home, "init", "BAR", "--unit", "prod", "--data-dir", data_dir)
        production = _config(
            tmp_path, data_dir, printer, development_unit=False, register={"id": "BAR"}
        )

        refused = _check(home, production)
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        message = flat(refused.stderr)
        assert f"development_unit: register KASSE-1 signs with the development unit {DEV}" in (
            message
        )
        assert "`till-agent special KASSE-1 closing --yes`" in message
        assert "register on a production unit (such as BAR)" in message

        agent = launch(production)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            bar = client.post("/v1/receipts", json=sale(register="BAR", request_id="b0"))
            kasse = client.post("/v1/receipts", json=sale(register="KASSE-1", request_id="k0"))
            retry = client.post("/v1/receipts", json=sale(register="KASSE-1", request_id="k-lost"))
            zero = client.post("/v1/registers/KASSE-1/zero-receipt", json={})
            third = client.get("/v1/receipts/KASSE-1/3")
        assert agent.terminate() == 0, agent.tail()
        logged = flat(agent.output())
        assert f"register KASSE-1 signs with the development unit {DEV}" in logged
        assert "till-agent special KASSE-1 closing --yes" in logged
        assert "until then its sales are refused" in logged
        assert bar.status_code == 201, bar.text
        assert bar.json()["signature_state"] == "signed"
        assert kasse.status_code == 409, kasse.text
        assert (kasse.json()["field"], kasse.json()["rule"]) == ("register", "development-unit")
        assert "send them to register BAR" in kasse.json()["message"]
        assert third.status_code == 404, third.text  # no number used: 2 is k-lost's
        assert retry.status_code == 200, retry.text  # a repeat gets what is stored
        assert retry.json()["number"] == lost.json()["number"] == 2
        assert zero.status_code == 409, zero.text  # a Nullbeleg is signed with the key too
        assert zero.json()["rule"] == "development-unit"

        _ok(home, "special", "KASSE-1", "closing", "--yes", "--data-dir", data_dir)
        assert _check(home, production).returncode == 0
        agent = launch(production)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            bar = client.post("/v1/receipts", json=sale(register="BAR"))
            kasse = client.post("/v1/receipts", json=sale(register="KASSE-1", request_id="k"))
        assert agent.terminate() == 0, agent.tail()
        assert bar.status_code == 201, bar.text
        assert bar.json()["signature_state"] == "signed"
        assert kasse.status_code == 409, kasse.text  # closed: nothing signs there


class TestUnitsOfEveryRegister:
    @pytest.fixture(autouse=True)
    def _three_registers(self, home: Path, data_dir: Path) -> None:
        """BAR and TERRASSE on unit shared, KUECHE on unit own."""
        for unit in ("shared", "own"):
            _ok(home, "unit", "create-software", "--id", unit, "--data-dir", data_dir)
        for register, unit in (("BAR", "shared"), ("TERRASSE", "shared"), ("KUECHE", "own")):
            _ok(home, "init", register, "--unit", unit, "--data-dir", data_dir)

    def test_units_listing_every_registers_unit_are_accepted(
        self, launch: Launch, tmp_path: Path, home: Path, data_dir: Path, printer: TcpPrinter
    ) -> None:
        """[[units]] shared and own with [register] id = BAR: check OK, `run` starts
        without an ERROR and every register signs."""
        config = _config(tmp_path, data_dir, printer, "shared", "own", register={"id": "BAR"})
        checked = _check(home, config)
        assert checked.returncode == 0, (checked.stdout, checked.stderr)
        agent = launch(config)
        agent.wait_ready()
        with client_for(agent, data_dir) as client:
            answers = [
                client.post("/v1/receipts", json=sale(register=r, request_id=f"x-{r}"))
                for r in ("BAR", "TERRASSE", "KUECHE")
            ]
        assert agent.terminate() == 0, agent.tail()
        assert [a.json()["signature_state"] for a in answers] == ["signed"] * 3
        assert "ERROR" not in agent.output(), agent.tail()

    def test_units_without_the_configured_registers_unit_are_refused_with_advice(
        self, tmp_path: Path, home: Path, data_dir: Path, printer: TcpPrinter
    ) -> None:
        """[[units]] own only, [register] id = BAR (on shared): refused, naming the unit
        missing, and that own signs for KUECHE already (no new register to set up)."""
        config = _config(tmp_path, data_dir, printer, "own", register={"id": "BAR"})
        refused = _check(home, config)
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        message = flat(refused.stderr)
        assert "register BAR exists with unit shared" in message
        assert "add shared to [[units]]" in message
        assert "own signs for register KUECHE already" in message
        assert "set up a new register" not in message

    def test_a_lost_key_of_another_registers_unit_is_named(
        self, tmp_path: Path, home: Path, data_dir: Path, printer: TcpPrinter
    ) -> None:
        """A restore without keys/own.key.pem (KUECHE's unit): the check of [register]
        id = BAR fails naming KUECHE, the unit and the file."""
        (data_dir / "keys" / "own.key.pem").unlink()
        config = _config(tmp_path, data_dir, printer, register={"id": "BAR"})
        refused = _check(home, config)
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        message = flat(refused.stderr)
        assert "register KUECHE: unit own (stored in the till database)" in message
        assert str(data_dir / "keys" / "own.key.pem") in message


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

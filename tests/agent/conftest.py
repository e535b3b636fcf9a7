"""Fixtures shared by the agent tests: the command line, the outage prober and watch, and a
chain unit on the real chain-service fake on loopback (agent/fakes/chain_service.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FrozenClock
from agent.fakes.chain_service import ChainServiceFake
from agent.outage_watch import OutageWatch
from agent.probe import Backoff, Prober
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig
from agent.signing.flaky import FlakyUnit
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit, cli_run, expect, sale
from storage import TillDB

CHAIN_TOKEN = "test-token"


@pytest.fixture(name="run")
def _run(monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invoke the Typer app in-process, with no data directory or configuration from the
    environment of this machine (test_cli.py and test_cli_outage.py have their own)."""
    for name in ("TILL_AGENT_DATA_DIR", "TILL_AGENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return cli_run()


@pytest.fixture(name="till")
def _till(run: Run, data_dir: Path) -> Path:
    """Register KASSE-1 with its Startbeleg (1) and one sale (2), made on the command line
    (test_cli.py has its own). Its unit signs as AT1, as the conftest's: a self-signed key
    under AT100 (the default) would make KASSE-1 a development register, which owes no
    Belegcheck nor FinanzOnline report."""
    expect(run("unit", "create-software", "--id", "dev", "--zda", "AT1", "--data-dir", data_dir), 0)
    expect(run("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir), 0)
    expect(run("issue", "-", "--data-dir", data_dir, input=json.dumps(sale())), 0)
    return data_dir


@pytest.fixture(name="with_outage")
def _with_outage(run: Run, data_dir: Path) -> Path:
    """A data directory with outage 1: its unit (AT1, as the till's) switched down, one
    fallback receipt."""
    unit = ("--id", "dev", "--zda", "AT1", "--simulate")
    expect(run("unit", "create-software", *unit, "--data-dir", data_dir), 0)
    expect(run("init", "KASSE-1", "--unit", "dev", "--data-dir", data_dir), 0)
    expect(run("simulate", "unit", "down", "--data-dir", data_dir), 0)
    issued = run("issue", "-", "--data-dir", data_dir, input=json.dumps(sale()))
    assert "fallback" in expect(issued, 0).stdout
    return data_dir


@pytest.fixture(name="bare_flaky")
def _bare_flaky(bare_service: ReceiptService, registry: UnitRegistry) -> FlakyUnit:
    """The unit of ``bare_service`` (no register yet) wrapped so the test can switch it."""
    with bare_service.db.write_connection().transaction() as conn:
        flaky = FlakyUnit(registry.get(conn, "dev"))
    registry.put(flaky)
    return flaky


@pytest.fixture(name="prober")
def _prober(service: ReceiptService) -> Prober:
    return Prober(service, Backoff(initial=5.0, cap=60.0, jitter=0.0))


@pytest.fixture(name="watch")
def _watch(service: ReceiptService) -> OutageWatch:
    """The service's own watch (on its clock): the one the agent ticks and closes with."""
    return service.outages.watch


@pytest.fixture(name="chain_hold")
def _chain_hold() -> float:
    """Seconds a lost answer of the chain fake holds its connection; a module may override."""
    return 2.0


@pytest.fixture(name="chain")
def _chain(tmp_path: Path, chain_hold: float) -> Iterator[ChainServiceFake]:
    with ChainServiceFake(CHAIN_TOKEN, key_dir=tmp_path / "chain-key", hold=chain_hold) as fake:
        yield fake


@pytest.fixture(name="chain_unit")
def _chain_unit(db: TillDB, registry: UnitRegistry, chain: ChainServiceFake, tmp_path: Path) -> str:
    """The database and the registry know unit ``chain`` on the fake; its id."""
    token_file = tmp_path / "chain-token"
    token_file.write_text(CHAIN_TOKEN)
    config = UnitConfig(id="chain", kind="chain", zda="AT1", url=chain.url, token_file=token_file)
    add_unit(db, registry, config)
    return config.id


@pytest.fixture(name="chain_service")
def _chain_service(
    db: TillDB, registry: UnitRegistry, clock: FrozenClock, chain_unit: str
) -> ReceiptService:
    """A receipt service with register KASSE-1 on the chain unit (signing times out at 1.5 s)."""
    service = ReceiptService(db, registry, clock=clock, sign_timeout=1.5)
    service.init_register(RegisterSetup("KASSE-1", [chain_unit]))
    return service

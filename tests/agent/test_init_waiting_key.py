"""``till-agent init`` whose Startbeleg's answer is lost: the register waits with its key.

A chain service may hold the Startbeleg signed, so the register waits and recovery sends
the same Startbeleg again (test_remedy_must_sign.py). Its AES key is kept with it, and
the FinanzOnline registration needs it: init says it now, the only time it is shown.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.at_rksv import aes_key_check_value
from agent.fakes.chain_service import ChainServiceFake
from agent.signing import UnitConfig
from agent.signing.registry import UnitRegistry
from factories import Run, add_unit
from storage import open_till_db

CHAIN_TOKEN = "test-token"


@pytest.fixture(name="chain_dir")
def _chain_dir(tmp_path: Path) -> Iterator[tuple[Path, ChainServiceFake]]:
    """A data directory that knows unit ``chain`` on a fake whose answers are lost."""
    token_file = tmp_path / "chain-token"
    token_file.write_text(CHAIN_TOKEN)
    with ChainServiceFake(CHAIN_TOKEN, key_dir=tmp_path / "chain-key", hold=4.0) as fake:
        data = tmp_path / "data"
        db = open_till_db(data)
        registry = UnitRegistry()
        try:
            url = fake.url
            config = UnitConfig(id="chain", kind="chain", zda="AT1", url=url, token_file=token_file)
            add_unit(db, registry, config)
        finally:
            registry.close()
            db.close()
        yield data, fake


def _kept_key(data: Path) -> str:
    conn = sqlite3.connect(data / "till.sqlite3")
    try:
        [(setup,)] = conn.execute("SELECT setup FROM waiting_specials WHERE kind = 'start'")
    finally:
        conn.close()
    return str(json.loads(setup)["aes_key"])


@pytest.mark.parametrize("as_json", [False, True])
def test_init_shows_the_key_its_waiting_startbeleg_keeps(
    run: Run, chain_dir: tuple[Path, ChainServiceFake], as_json: bool
) -> None:
    data, fake = chain_dir
    fake.mode = "lose_put_response"  # the certificate is fetched; the receipt is lost
    args = ["init", "KASSE-1", "--unit", "chain", "--data-dir", data]
    result = run(*args, "--json") if as_json else run(*args)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    key = _kept_key(data)
    if as_json:
        body = json.loads(result.stdout)
        assert body["error"] == "WaitsForUnit"
        assert (body["aes_key"], body["aes_key_check_value"]) == (key, aes_key_check_value(key))
    else:
        assert key in result.stdout
        assert aes_key_check_value(key) in result.stdout
        assert "waits" in result.stderr


def test_an_init_refused_with_nothing_kept_shows_no_key(
    run: Run, chain_dir: tuple[Path, ChainServiceFake]
) -> None:
    """The service down before anything was sent: no register waits, so no key is shown
    (a later init makes a new one)."""
    data, fake = chain_dir
    fake.mode = "down"
    result = run("init", "KASSE-1", "--unit", "chain", "--data-dir", data)
    assert result.exit_code == 4
    assert "AES key" not in result.stdout

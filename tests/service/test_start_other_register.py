"""The start warning when the configured register does not exist but the data directory
holds others (set up with ``till-agent init SHOP-7``): it names them and the key to set."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from service.conftest import Start
from typer.testing import CliRunner

from agent.cli import app


def _cli(data_dir: Path, *args: str) -> None:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TILL_AGENT_DATA_DIR", raising=False)


class TestOtherRegister:
    def test_the_warning_names_the_register_there_and_the_key_to_set(
        self, start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`init SHOP-7`, then `run` with the default [register] id (KASSE-1): no advice
        to initialize KASSE-1, but the register SHOP-7 and ``[register] id = "SHOP-7"``."""
        _cli(data_dir, "unit", "create-software", "--id", "u1")
        _cli(data_dir, "init", "SHOP-7", "--unit", "u1")
        caplog.clear()
        start()
        [warning] = [w for w in _warnings(caplog) if "KASSE-1" in w]
        assert "holds register SHOP-7" in warning
        assert '[register] id = "SHOP-7"' in warning
        assert "till-agent init" not in warning

    def test_the_configured_register_there_warns_nothing(
        self, start: Start, data_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        _cli(data_dir, "unit", "create-software", "--id", "u1")
        _cli(data_dir, "init", "SHOP-7", "--unit", "u1")
        caplog.clear()
        start(register={"id": "SHOP-7"})
        assert not [w for w in _warnings(caplog) if "initialized" in w]

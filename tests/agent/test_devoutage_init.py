"""`init` on the development unit shows the AES key (the DEP verification needs it) without
sending the operator to FinanzOnline: a development register is not registered there."""

from __future__ import annotations

from pathlib import Path

from conftest import REGISTER, UNIT

from agent.signing.config import DEV_UNIT
from factories import Run, expect, flat

DEV_REGISTER = "DEV-1"


class TestInit:
    def test_the_development_register_is_not_sent_to_finanzonline(
        self, run: Run, data_dir: Path
    ) -> None:
        """`init --unit dev-uncertified` shows the AES key (the DEP verification needs it)
        and says the register is not registered in FinanzOnline; on another unit the key is
        still to be registered there."""
        for unit in (DEV_UNIT, UNIT):
            expect(run("unit", "create-software", "--id", unit, "--data-dir", data_dir), 0)
        development = flat(
            expect(run("init", DEV_REGISTER, "--unit", DEV_UNIT, "--data-dir", data_dir), 0).stdout
        )
        production = flat(
            expect(run("init", REGISTER, "--unit", UNIT, "--data-dir", data_dir), 0).stdout
        )
        assert "register it in FinanzOnline" not in development
        assert "not registered in FinanzOnline" in development
        assert "DEP verification" in development
        assert "AES key check value: " in development
        assert "AES key (register it in FinanzOnline, keep it secret): " in production
        assert "not registered in FinanzOnline" not in production

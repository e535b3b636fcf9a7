"""`init` on a development unit (AT100) shows the AES key (the DEP verification needs it) without
sending the operator to FinanzOnline: a development register is not registered there."""

from __future__ import annotations

from pathlib import Path

from conftest import REGISTER, UNIT

from factories import Run, expect, flat

DEV_REGISTER = "DEV-1"
DEV_ID = "devbox"  # dev-uncertified is reserved for the unit `run` creates


class TestInit:
    def test_the_development_register_is_not_sent_to_finanzonline(
        self, run: Run, data_dir: Path
    ) -> None:
        """`init` on a development unit (AT100, `unit create-software`'s default) shows the
        AES key (the DEP verification needs it) and says the register is not registered in
        FinanzOnline; on a closed-system unit the key is still to be registered there."""
        expect(run("unit", "create-software", "--id", DEV_ID, "--data-dir", data_dir), 0)
        closed = ("--id", UNIT, "--key-id", "U:ATU12345678-K1")
        expect(run("unit", "create-software", *closed, "--data-dir", data_dir), 0)
        development = flat(
            expect(run("init", DEV_REGISTER, "--unit", DEV_ID, "--data-dir", data_dir), 0).stdout
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

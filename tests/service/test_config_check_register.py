"""``config check`` and ``[register] counter_bytes``: what ``run`` refuses when it creates
the register (more than 8 bytes) is refused, but only while the register does not exist;
an existing register keeps its stored counter size and starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from conftest import WriteConfig
from service.conftest import Start
from typer.testing import CliRunner, Result

from agent.cli_config import config_app
from agent.errors import InvalidSale
from storage.db import DB_FILE

pytestmark = pytest.mark.usefixtures("no_system_config")

Check = Callable[[int], Result]


@pytest.fixture(name="check")
def _check(write_config: WriteConfig, data_dir: Path) -> Check:
    """``till-agent config check`` on ``data_dir`` with a counter_bytes."""
    app = typer.Typer()
    app.add_typer(config_app, name="config")

    def check(counter_bytes: int) -> Result:
        path = write_config(
            f'data_dir = "{data_dir}"\ndevelopment_unit = true\n'
            f"[register]\ncounter_bytes = {counter_bytes}\n"
            f'[backup]\ndir = "{data_dir.parent / "backups"}"\n'
        )
        return CliRunner().invoke(app, ["config", "check", "--config", str(path)])

    return check


def _flat(text: str) -> str:
    return " ".join(text.split())


class TestNewRegister:
    def test_16_bytes_are_refused_as_run_refuses_them(
        self, check: Check, start: Start, data_dir: Path
    ) -> None:
        """No register yet: exit 3 naming the field and the rule `run` applies."""
        refused = check(16)
        assert refused.exit_code == 3, refused.output
        message = _flat(refused.stderr)
        assert "register.counter_bytes: the turnover counter has 5 to 8 bytes" in message
        assert "[range]" in message
        with pytest.raises(InvalidSale):  # what the check foretold
            start(register={"counter_bytes": 16})

    def test_8_bytes_are_accepted(self, check: Check) -> None:
        result = check(8)
        assert result.exit_code == 0, result.output

    def test_a_database_that_cannot_be_read_is_no_excuse(
        self, check: Check, data_dir: Path
    ) -> None:
        """When the check cannot tell whether the register exists, it assumes `run`
        creates it: 16 bytes are refused."""
        data_dir.mkdir(parents=True)
        (data_dir / DB_FILE).write_bytes(b"not a database" * 100)
        refused = check(16)
        assert refused.exit_code == 3, refused.output
        assert "register.counter_bytes:" in refused.stderr


class TestExistingRegister:
    def test_16_bytes_are_accepted_and_said_to_be_ignored(self, check: Check, start: Start) -> None:
        """The register exists (8 bytes): exit 0, a warning that the value is ignored."""
        start().stop()
        result = check(16)
        assert result.exit_code == 0, result.output
        warning = _flat(result.stderr)
        assert "register.counter_bytes = 16 is ignored: register KASSE-1 exists" in warning
        assert "keeps the counter size it was created with" in warning
        start(register={"counter_bytes": 16})  # and run starts, as the check said

    def test_8_bytes_warn_nothing(self, check: Check, start: Start) -> None:
        start().stop()
        result = check(8)
        assert result.exit_code == 0, result.output
        assert "counter_bytes" not in result.stderr

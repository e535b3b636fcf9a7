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


class TestReceiptIdFormat:
    """``[register] receipt_id_format``: a new register gets only a format that gives each
    receipt an id of its own (registers.check_receipt_id_format); an existing register
    keeps the one it was created with, so an odd one configured before still starts."""

    @pytest.fixture(name="check_format")
    def _check_format(self, write_config: WriteConfig, data_dir: Path) -> Callable[[], Result]:
        app = typer.Typer()
        app.add_typer(config_app, name="config")
        path = write_config(
            f'data_dir = "{data_dir}"\ndevelopment_unit = true\n'
            f'[register]\nreceipt_id_format = "{{number:.1e}}"\n'
            f'[backup]\ndir = "{data_dir.parent / "backups"}"\n'
        )
        return lambda: CliRunner().invoke(app, ["config", "check", "--config", str(path)])

    def test_a_new_register_is_refused_by_check_and_run(
        self, check_format: Callable[[], Result], start: Start
    ) -> None:
        refused = check_format()
        assert refused.exit_code == 3, refused.output
        assert "register.receipt_id_format:" in refused.stderr
        assert "[format]" in refused.stderr
        with pytest.raises(InvalidSale):
            start(register={"receipt_id_format": "{number:.1e}"})

    def test_an_existing_register_keeps_its_format_and_starts(
        self, check_format: Callable[[], Result], start: Start
    ) -> None:
        start().stop()  # created with the default {number}
        assert check_format().exit_code == 0
        till = start(register={"receipt_id_format": "{number:.1e}"})
        assert till.receipts.zero_receipt("KASSE-1").result.receipt_id == "2"


def test_an_empty_database_file_is_no_register_and_stays_empty(
    check: Check, data_dir: Path
) -> None:
    """An empty till.sqlite3 is "no till database yet": the check says what `run` would
    refuse for a new register (exit 3, no traceback) and leaves the file as it is."""
    data_dir.mkdir(parents=True, mode=0o700)
    (data_dir / DB_FILE).touch()
    refused = check(16)
    assert refused.exit_code == 3, refused.output
    assert "register.counter_bytes:" in refused.stderr
    assert (data_dir / DB_FILE).stat().st_size == 0
